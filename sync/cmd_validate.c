/* labctl images validate [--manifest PATH] [--offline] [--check-files] [--json] */
#include "common/log.h"
#include "common/size.h"
#include "manifest/manifest.h"
#include "sync/cli.h"
#include "sync/commands.h"
#include "sync/fetch.h"
#include "sync/files.h"
#include "sync/github.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEAD_THREADS 8

enum { OPT_OFFLINE = 1, OPT_CHECK_FILES, OPT_JSON };

static const struct optdef validate_opts[] = {
        CLI_OPT_MANIFEST,
        {"offline", OPT_OFFLINE, 0, NULL, "only check the manifest; no HEAD requests"},
        {"check-files", OPT_CHECK_FILES, 0, NULL,
         "also check that every updateFile.path exists and every pattern matches it "
         "(default when GITHUB_ACTIONS=true)"},
        {"json", OPT_JSON, 0, NULL, "print one JSON document on stdout instead of text"},
        CLI_OPT_CA_BUNDLE,
        CLI_OPT_END,
};

static const struct cmd_spec validate_spec = {
        "images validate",
        "[--manifest PATH] [--offline] [--check-files] [--json] [--ca-bundle FILE]",
        "Check the manifest: schema, unknown keys, https URLs, checksums, decompression,\n"
        "unique names and destinations, updateFile paths, patterns and templates; every\n"
        "problem is reported as FILE:LINE:COLUMN (and, with GITHUB_ACTIONS=true, as an\n"
        "::error annotation on stdout).  --check-files also opens every updateFile.path\n"
        "(relative to the repo root) and checks that each pattern matches it.  Without\n"
        "--offline, also send a HEAD request (redirects followed) to every source URL and\n"
        "report each status.  Exit 2 when the manifest is invalid, 1 when a source URL\n"
        "does not answer.",
        validate_opts,
};

struct validate_args {
	int offline, check_files, json;
};

struct head_check {
	const struct mf_image *img;
	long status;
	uint64_t size;
	int failed;
	struct err e;
};

struct head_pool {
	struct head_check *v;
	size_t n, next;
	const char *ca_bundle;
	pthread_mutex_t mu;
};

static void *head_main(void *arg)
{
	struct head_pool *p = arg;
	for (;;) {
		struct head_check *c;
		struct fetch_opts fo = {0};
		pthread_mutex_lock(&p->mu);
		c = p->next < p->n ? &p->v[p->next++] : NULL;
		pthread_mutex_unlock(&p->mu);
		if (!c)
			return NULL;
		fo.url = c->img->source.url;
		fo.ca_bundle = p->ca_bundle;
		fo.max_attempts = 3;
		if (fetch_head(&fo, &c->status, &c->size, &c->e))
			c->failed = 1;
		else if (c->status >= 400)
			c->failed = 1;
	}
}

/* HEAD every source URL, HEAD_THREADS at a time; v[i] for image i. */
static struct head_check *run_heads(const struct manifest *m, const char *ca_bundle)
{
	struct head_pool pool = {0};
	pthread_t th[HEAD_THREADS];
	int nth = 0;
	pool.v = calloc(m->nimages + 1, sizeof(*pool.v));
	if (!pool.v)
		return NULL;
	pool.n = m->nimages;
	pool.ca_bundle = ca_bundle;
	pthread_mutex_init(&pool.mu, NULL);
	for (size_t i = 0; i < m->nimages; i++)
		pool.v[i].img = &m->images[i];
	for (int i = 0; i < HEAD_THREADS && (size_t)i < m->nimages; i++)
		if (!pthread_create(&th[nth], NULL, head_main, &pool))
			nth++;
	if (!nth)
		head_main(&pool);
	for (int i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&pool.mu);
	return pool.v;
}

static int print_heads(const struct manifest *m, const struct head_check *v)
{
	int bad = 0;
	for (size_t i = 0; i < m->nimages; i++) {
		const struct head_check *c = &v[i];
		char size[32] = "size unknown";
		if (c->size != UINT64_MAX && !c->failed)
			size_format(c->size, size, sizeof(size));
		if (c->failed && c->status == 0)
			printf("%-24s UNREACHABLE  %s\n", c->img->name, c->e.msg);
		else if (c->failed)
			printf("%-24s HTTP %ld     %s\n", c->img->name, c->status,
			       c->img->source.url);
		else
			printf("%-24s HTTP %ld     %s (%s)\n", c->img->name, c->status,
			       c->img->source.url, size);
		bad += c->failed;
	}
	if (bad)
		log_error("%d of %zu source URL%s did not answer with success", bad, m->nimages,
		          m->nimages == 1 ? "" : "s");
	return bad;
}

static json_t *problems_json(const struct mf_problems *p)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < p->n; i++) {
		char *msg = mf_problem_message(p, i);
		json_array_append_new(a,
		                      json_pack("{s:s, s:i, s:i, s:s}", "file", mf_problems_file(p),
		                                "line", p->v[i].line, "column", p->v[i].col,
		                                "message", msg ? msg : "out of memory"));
		free(msg);
	}
	return a;
}

static json_t *heads_json(const struct manifest *m, const struct head_check *v)
{
	json_t *a = json_array();
	for (size_t i = 0; a && v && i < m->nimages; i++) {
		const struct head_check *c = &v[i];
		json_t *o = json_pack("{s:s, s:s, s:b}", "name", c->img->name, "url",
		                      c->img->source.url, "ok", !c->failed);
		if (c->status)
			json_object_set_new(o, "status", json_integer(c->status));
		if (!c->failed && c->size != UINT64_MAX)
			json_object_set_new(o, "size", json_integer((json_int_t)c->size));
		if (c->failed && c->status == 0)
			json_object_set_new(o, "error", json_string(c->e.msg));
		json_array_append_new(a, o);
	}
	return a;
}

static int validate_opt(void *ud, int id, const char *v, struct err *e)
{
	struct validate_args *a = ud;
	(void)v;
	(void)e;
	if (id == OPT_OFFLINE)
		a->offline = 1;
	else if (id == OPT_CHECK_FILES)
		a->check_files = 1;
	else if (id == OPT_JSON)
		a->json = 1;
	return 0;
}

/* Load, and with --check-files check the updateFile targets too: every
 * problem ends up in probs. */
static int load(const char *path, int check_files, struct manifest **m, struct mf_problems *probs,
                struct err *e)
{
	char *root = NULL;
	int rc = -1;
	if (manifest_load(path, m, probs, e))
		return -1;
	if (check_files) {
		if (manifest_repo_root(path, &root, e) || files_check(*m, root, probs, e))
			goto out;
		if (probs->n) {
			if (!probs->file && !(probs->file = strdup(path))) {
				err_set(e, ERR_IO, "out of memory");
				goto out;
			}
			err_set(e, ERR_INVALID, "invalid");
			goto out;
		}
	}
	rc = 0;
out:
	if (rc) {
		manifest_free(*m);
		*m = NULL;
	}
	free(root);
	return rc;
}

int cmd_validate(int argc, char **argv)
{
	struct common_opts common = {0};
	struct validate_args a = {.check_files = github_actions()};
	struct mf_problems probs = MF_PROBLEMS_INIT;
	struct head_check *heads = NULL;
	struct manifest *m = NULL;
	struct err e = {0};
	const char *path;
	int rc, bad = 0;
	rc = cli_parse(&validate_spec, argc, argv, &common, validate_opt, &a, &e);
	if (rc)
		return rc > 0 ? 0 : cli_fail(&e);
	path = cli_manifest_path(&common);
	if (load(path, a.check_files, &m, &probs, &e)) {
		if (e.code != ERR_INVALID) {
			rc = cli_fail(cli_manifest_error(&e, path, 0));
			goto out;
		}
		if (a.json) {
			json_t *doc = json_pack("{s:s, s:b, s:o}", "manifest", path, "valid", 0,
			                        "problems", problems_json(&probs));
			json_dumpf(doc, stdout, JSON_INDENT(2));
			fputc('\n', stdout);
			json_decref(doc);
			github_annotate_problems(&probs);
			rc = 2;
			goto out;
		}
		cli_report_problems(&probs);
		rc = cli_fail(cli_manifest_error(&e, path, probs.n));
		goto out;
	}
	if (!a.json)
		printf("manifest %s is valid: %zu image%s, %zu overlay%s\n", path, m->nimages,
		       m->nimages == 1 ? "" : "s", m->noverlays, m->noverlays == 1 ? "" : "s");
	if (!a.offline && m->nimages) {
		heads = run_heads(m, cli_ca_bundle(&common));
		if (!heads) {
			err_set(&e, ERR_IO, "out of memory");
			rc = cli_fail(&e);
			goto out;
		}
		bad = a.json ? 0 : print_heads(m, heads);
		for (size_t i = 0; a.json && i < m->nimages; i++)
			bad += heads[i].failed;
	}
	if (a.json) {
		json_t *doc = json_pack("{s:s, s:b, s:i, s:i, s:o}", "manifest", path, "valid", 1,
		                        "images", (int)m->nimages, "overlays", (int)m->noverlays,
		                        "problems", json_array());
		if (heads)
			json_object_set_new(doc, "sources", heads_json(m, heads));
		json_dumpf(doc, stdout, JSON_INDENT(2));
		fputc('\n', stdout);
		json_decref(doc);
	}
	rc = bad ? 1 : 0;
out:
	free(heads);
	manifest_free(m);
	mf_problems_free(&probs);
	return rc;
}
