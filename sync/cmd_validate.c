/* labctl images validate [--manifest PATH] [--offline] */
#include "common/log.h"
#include "common/size.h"
#include "manifest/manifest.h"
#include "sync/cli.h"
#include "sync/commands.h"
#include "sync/fetch.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEAD_THREADS 8

enum { OPT_OFFLINE = 1 };

static const struct optdef validate_opts[] = {
        CLI_OPT_MANIFEST,
        {"offline", OPT_OFFLINE, 0, NULL, "only check the manifest; no HEAD requests"},
        CLI_OPT_CA_BUNDLE,
        CLI_OPT_END,
};

static const struct cmd_spec validate_spec = {
        "images validate",
        "[--manifest PATH] [--offline] [--ca-bundle FILE]",
        "Check the manifest: schema, unknown keys, https URLs, checksums, decompression,\n"
        "unique names and destinations, updateFile paths, patterns and templates; every\n"
        "problem is reported as FILE:LINE:COLUMN.  Without --offline, also send a HEAD\n"
        "request (redirects followed) to every source URL and report each status.\n"
        "Exit 2 when the manifest is invalid, 1 when a source URL does not answer.",
        validate_opts,
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

static int check_urls(const struct manifest *m, const char *ca_bundle)
{
	struct head_pool pool = {0};
	pthread_t th[HEAD_THREADS];
	int nth = 0, bad = 0;
	pool.v = calloc(m->nimages, sizeof(*pool.v));
	if (!pool.v) {
		fprintf(stderr, "labctl: out of memory\n");
		return 1;
	}
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
	for (size_t i = 0; i < m->nimages; i++) {
		struct head_check *c = &pool.v[i];
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
	pthread_mutex_destroy(&pool.mu);
	free(pool.v);
	if (bad) {
		fprintf(stderr, "labctl: %d of %zu source URL%s did not answer with success\n", bad,
		        m->nimages, m->nimages == 1 ? "" : "s");
		return 1;
	}
	return 0;
}

static int validate_opt(void *ud, int id, const char *v, struct err *e)
{
	(void)v;
	(void)e;
	if (id == OPT_OFFLINE)
		*(int *)ud = 1;
	return 0;
}

int cmd_validate(int argc, char **argv)
{
	struct common_opts common = {0};
	struct manifest *m = NULL;
	struct err e = {0};
	int offline = 0, rc;
	rc = cli_parse(&validate_spec, argc, argv, &common, validate_opt, &offline, &e);
	if (rc)
		return rc > 0 ? 0 : cli_fail(&e);
	if (cli_load_manifest(&common, &m, &e))
		return cli_fail(&e);
	printf("manifest %s is valid: %zu image%s, %zu overlay%s\n", cli_manifest_path(&common),
	       m->nimages, m->nimages == 1 ? "" : "s", m->noverlays, m->noverlays == 1 ? "" : "s");
	rc = 0;
	if (!offline && m->nimages)
		rc = check_urls(m, cli_ca_bundle(&common));
	manifest_free(m);
	return rc;
}
