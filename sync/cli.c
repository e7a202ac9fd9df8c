#include "sync/cli.h"
#include "sync/github.h"

#include "common/log.h"
#include "manifest/manifest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const struct optdef help_opts[] = {OPT_DEF_HELP, OPT_DEF_END};
/* every command that reaches the bucket takes these; the others ignore them */
static const struct optdef bucket_opts[] = {CRED_OPTDEF_ENDPOINT, CRED_OPTDEF_BUCKET, OPT_DEF_END};

#ifndef IMGSTORE_VERSION
#define IMGSTORE_VERSION "unknown"
#endif

const struct optdef cli_global_opts[] = {
        {"version", CLI_OPT_VERSION, 0, NULL, "show the version and exit"},
        {"verbose", 'v', 0, NULL, "-v: log debug lines too"},
        {"quiet", 'q', 0, NULL, "-q: log warnings and errors only"},
        {"log-level", CLI_OPT_LOG_LEVEL, 1, "LEVEL", "error, warn, info (default) or debug"},
        OPT_DEF_END,
};

int cli_global_opt(int id, const char *value, struct err *e)
{
	enum log_level l;
	switch (id) {
	case CLI_OPT_VERSION: printf("labctl %s\n", IMGSTORE_VERSION); return 1;
	case 'v': log_set_level(LOG_LVL_DEBUG); return 0;
	case 'q': log_set_level(LOG_LVL_WARN); return 0;
	case CLI_OPT_LOG_LEVEL:
		if (log_parse_level(value, &l))
			return err_set(e, ERR_USAGE,
			               "--log-level: '%s' is not one of error, warn, info, debug",
			               value);
		log_set_level(l);
		return 0;
	}
	return -2;
}

static void help_opts_print(const struct optdef *opts, FILE *out)
{
	for (const struct optdef *o = opts; o && o->name; o++) {
		char left[64];
		if (o->has_arg)
			snprintf(left, sizeof(left), "--%s %s", o->name, o->metavar);
		else
			snprintf(left, sizeof(left), "--%s", o->name);
		fprintf(out, "  %-28s %s\n", left, o->help);
	}
}

void cli_help(const struct cmd_spec *spec, FILE *out)
{
	int bucket = 0;
	fprintf(out, "Usage: labctl %s %s\n\n%s\n\nOptions:\n", spec->name, spec->usage,
	        spec->summary);
	help_opts_print(spec->opts, out);
	/* every command parses --endpoint/--bucket; only those that take
	 * credentials reach the bucket and show them */
	for (const struct optdef *o = spec->opts; o && o->name; o++)
		bucket |= o->id == CRED_OPT_CREDENTIALS;
	if (bucket)
		help_opts_print(bucket_opts, out);
	for (const struct optdef *o = cli_global_opts; o->name; o++)
		fprintf(out, "  --%-26s %s\n", o->has_arg ? "log-level LEVEL" : o->name, o->help);
	fprintf(out, "  %-28s %s\n", "-h, --help", help_opts[0].help);
	fprintf(out, "\nExit status: 0 success, 1 the work failed, 2 usage error or invalid "
	             "manifest.\n");
}

struct parse_ctx {
	const struct cmd_spec *spec;
	struct common_opts *common;
	opt_fn fn;
	void *ud;
	int failed; /* the command's handler set the error */
};

static int on_opt(void *ud, int id, const char *value, struct err *e)
{
	struct parse_ctx *c = ud;
	int g;
	if (id == 'h') {
		cli_help(c->spec, stdout);
		return 1;
	}
	if ((g = cli_global_opt(id, value, e)) != -2)
		return g;
	if (id == OPT_MANIFEST) {
		c->common->manifest = value;
		return 0;
	}
	if (cred_opt_set(&c->common->cred, id, value))
		return 0;
	if (!c->fn || c->fn(c->ud, id, value, e)) {
		c->failed = 1;
		return err_prefix(e, "%s", c->spec->name);
	}
	return 0;
}

int cli_parse(const struct cmd_spec *spec, int argc, char **argv, struct common_opts *common,
              opt_fn fn, void *ud, struct err *e)
{
	const struct optdef *const tables[] = {spec->opts, bucket_opts, help_opts, cli_global_opts,
	                                       NULL};
	struct parse_ctx c = {spec, common, fn, ud, 0};
	const struct opt_parser p = {tables, "h" CLI_GLOBAL_SHORTS, on_opt, NULL, &c};
	struct err pe = {0};
	int rc = opt_parse(&p, argc, argv, &pe);
	if (rc < 0 && !c.failed)
		err_set(e, ERR_USAGE, "%s: %s (see 'labctl %s --help')", spec->name, pe.msg,
		        spec->name);
	else if (rc < 0)
		err_set(e, pe.code, "%s", pe.msg);
	return rc;
}

int cli_fail(const struct err *e)
{
	fprintf(stderr, "labctl: %s\n", e->msg[0] ? e->msg : "failed");
	return err_exit_code(e) ? err_exit_code(e) : 1;
}

int cli_parse_int(const char *flag, const char *value, long min, long max, long *out, struct err *e)
{
	char *end;
	long v;
	errno = 0;
	v = strtol(value, &end, 10);
	if (errno || end == value || *end || v < min || v > max)
		return err_set(e, ERR_USAGE, "--%s: '%s' is not a whole number from %ld to %ld",
		               flag, value, min, max);
	*out = v;
	return 0;
}

const char *cli_ca_bundle(const struct common_opts *c)
{
	return c->cred.ca_bundle;
}

int cli_s3_config(const struct common_opts *c, struct s3_config *cfg, struct err *e)
{
	if (credentials_resolve(&c->cred, cfg, e))
		return -1;
	if (strncmp(cfg->endpoint, "http://", 7) && strncmp(cfg->endpoint, "https://", 8)) {
		s3_config_free(cfg);
		return err_set(e, ERR_USAGE, "the endpoint must start with https:// or http://");
	}
	s3_config_defaults(cfg);
	return 0;
}

const char *cli_manifest_path(const struct common_opts *c)
{
	return c->manifest ? c->manifest : MF_DEFAULT_PATH;
}

void cli_report_problems(const struct mf_problems *probs)
{
	mf_problems_print(stderr, probs);
	github_annotate_problems(probs);
}

struct err *cli_manifest_error(struct err *e, const char *path, size_t nproblems)
{
	if (e->code == ERR_INVALID)
		err_set(e, ERR_INVALID, "manifest %s is invalid: %zu problem%s (listed above)",
		        path, nproblems, nproblems == 1 ? "" : "s");
	else if (e->code == ERR_NOTFOUND)
		err_set(e, ERR_USAGE,
		        "no manifest at %s (run from the repo root or pass --manifest "
		        "PATH)",
		        path);
	return e;
}

int cli_load_manifest(const struct common_opts *c, struct manifest **m, struct err *e)
{
	struct mf_problems probs = MF_PROBLEMS_INIT;
	const char *path = cli_manifest_path(c);
	*m = NULL;
	if (manifest_load(path, m, &probs, e)) {
		if (e->code == ERR_INVALID)
			cli_report_problems(&probs);
		cli_manifest_error(e, path, probs.n);
		mf_problems_free(&probs);
		return -1;
	}
	mf_problems_free(&probs);
	return 0;
}
