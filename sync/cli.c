#include "sync/cli.h"

#include "common/log.h"
#include "manifest/manifest.h"
#include "store/secrets/credentials.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const struct optdef help_opt = {"help", OPT_HELP, 0, NULL, "show this help and exit"};

static const struct optdef *find_opt(const struct cmd_spec *spec, const char *name, size_t len)
{
	if (len == 4 && !strncmp(name, "help", 4))
		return &help_opt;
	for (const struct optdef *o = spec->opts; o && o->name; o++)
		if (strlen(o->name) == len && !strncmp(o->name, name, len))
			return o;
	return NULL;
}

void cli_help(const struct cmd_spec *spec, FILE *out)
{
	fprintf(out, "Usage: labctl %s %s\n\n%s\n\nOptions:\n", spec->name, spec->usage,
	        spec->summary);
	for (const struct optdef *o = spec->opts; o && o->name; o++) {
		char left[64];
		if (o->has_arg)
			snprintf(left, sizeof(left), "--%s %s", o->name, o->metavar);
		else
			snprintf(left, sizeof(left), "--%s", o->name);
		fprintf(out, "  %-28s %s\n", left, o->help);
	}
	fprintf(out, "  %-28s %s\n", "-h, --help", help_opt.help);
	fprintf(out, "\nExit status: 0 success, 1 the work failed, 2 usage error or invalid "
	             "manifest.\n");
}

static int usage_err(const struct cmd_spec *spec, struct err *e, const char *what)
{
	return err_set(e, ERR_USAGE, "%s: %s (see 'labctl %s --help')", spec->name, what,
	               spec->name);
}

int cli_parse(const struct cmd_spec *spec, int argc, char **argv, struct common_opts *common,
              cli_opt_fn fn, void *ud, struct err *e)
{
	char what[512];
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *value = NULL;
		const struct optdef *o;
		size_t len;
		if (!strcmp(arg, "-h")) {
			cli_help(spec, stdout);
			return 1;
		}
		if (strncmp(arg, "--", 2) || !arg[2]) {
			snprintf(what, sizeof(what), "unexpected argument '%s'", arg);
			return usage_err(spec, e, what);
		}
		arg += 2;
		len = strcspn(arg, "=");
		o = find_opt(spec, arg, len);
		if (!o) {
			snprintf(what, sizeof(what), "unknown option '--%.*s'", (int)len, arg);
			return usage_err(spec, e, what);
		}
		if (arg[len] == '=') {
			if (!o->has_arg) {
				snprintf(what, sizeof(what), "option '--%s' takes no value",
				         o->name);
				return usage_err(spec, e, what);
			}
			value = arg + len + 1;
		} else if (o->has_arg) {
			if (i + 1 >= argc) {
				snprintf(what, sizeof(what), "option '--%s' needs a value (%s)",
				         o->name, o->metavar);
				return usage_err(spec, e, what);
			}
			value = argv[++i];
		}
		if (o->has_arg && !*value) {
			snprintf(what, sizeof(what), "option '--%s' needs a non-empty value",
			         o->name);
			return usage_err(spec, e, what);
		}
		switch (o->id) {
		case OPT_HELP: cli_help(spec, stdout); return 1;
		case OPT_CREDENTIALS: common->credentials = value; break;
		case OPT_SOPS_AGE_KEY_FILE: common->sops_age_key_file = value; break;
		case OPT_CA_BUNDLE: common->ca_bundle = value; break;
		case OPT_MANIFEST: common->manifest = value; break;
		default:
			if (!fn || fn(ud, o->id, value, e))
				return err_prefix(e, "%s", spec->name);
		}
	}
	return 0;
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
	return c->ca_bundle;
}

int cli_s3_config(const struct common_opts *c, struct s3_config *cfg, struct err *e)
{
	struct cred_opts co = {0};
	co.credentials_path = c->credentials;
	co.age_key_file = c->sops_age_key_file;
	co.ca_bundle = c->ca_bundle;
	if (credentials_resolve(&co, cfg, e))
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

int cli_load_manifest(const struct common_opts *c, struct manifest **m, struct err *e)
{
	struct mf_problems probs = MF_PROBLEMS_INIT;
	const char *path = cli_manifest_path(c);
	*m = NULL;
	if (manifest_load(path, m, &probs, e)) {
		if (e && e->code == ERR_INVALID) {
			mf_problems_print(stderr, &probs);
			err_set(e, ERR_INVALID,
			        "manifest %s is invalid: %zu problem%s (listed above)", path,
			        probs.n, probs.n == 1 ? "" : "s");
		} else if (e && e->code == ERR_NOTFOUND) {
			err_set(e, ERR_USAGE,
			        "no manifest at %s (run from the repo root or pass --manifest "
			        "PATH)",
			        path);
		}
		mf_problems_free(&probs);
		return -1;
	}
	mf_problems_free(&probs);
	return 0;
}
