/* labctl images prune [--manifest PATH] [--credentials PATH] [--sops-age-key-file PATH]
 *                     [--dry-run] */
#include "common/log.h"
#include "common/size.h"
#include "manifest/manifest.h"
#include "store/record.h"
#include "sync/bucket.h"
#include "sync/cli.h"
#include "sync/commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IMAGE_PREFIX  "images/"
#define META_PREFIX   "metadata/"
#define META_SUFFIX   ".json"
#define STALE_UPLOADS (24 * 3600)

enum { OPT_DRY_RUN = 1, OPT_UPLOAD_AGE };

struct prune_args {
	int dry_run;
	long upload_age;
};

static const struct optdef prune_opts[] = {
        CLI_OPT_MANIFEST,
        CLI_OPT_CREDENTIALS,
        CLI_OPT_SOPS_AGE_KEY_FILE,
        {"dry-run", OPT_DRY_RUN, 0, NULL, "print what would be deleted and delete nothing"},
        {"upload-age", OPT_UPLOAD_AGE, 1, "SECONDS",
         "abort multipart uploads started longer ago than this (default 86400: 24 h)"},
        CLI_OPT_CA_BUNDLE,
        CLI_OPT_END,
};

static const struct cmd_spec prune_spec = {
        "images prune",
        "[--manifest PATH] [--credentials PATH] [--sops-age-key-file PATH] [--dry-run]",
        "Delete the images/ objects and their metadata/ records that the manifest no longer\n"
        "names, and abort multipart uploads older than 24 hours (--upload-age).  Refuses (exit 2, "
        "deletes\n"
        "nothing) when the manifest is invalid or names no images.  Keys outside images/\n"
        "and metadata/ are never touched, except imgstore's record index\n"
        "(index/records.json.gz), which is rebuilt after a deletion when there is one.",
        prune_opts,
};

static int prune_opt(void *ud, int id, const char *v, struct err *e)
{
	struct prune_args *a = ud;
	if (id == OPT_DRY_RUN)
		a->dry_run = 1;
	else if (id == OPT_UPLOAD_AGE)
		return cli_parse_int("upload-age", v, 0, 10L * 365 * 86400, &a->upload_age, e);
	return 0;
}

struct keylist {
	char **v;
	size_t n, cap;
	uint64_t bytes;
};

static int keys_add(struct keylist *k, const char *key, uint64_t size)
{
	if (k->n == k->cap) {
		size_t cap = k->cap ? 2 * k->cap : 64;
		char **nv = realloc(k->v, cap * sizeof(*nv));
		if (!nv)
			return -1;
		k->v = nv;
		k->cap = cap;
	}
	k->v[k->n] = strdup(key);
	if (!k->v[k->n])
		return -1;
	k->n++;
	k->bytes += size;
	return 0;
}

static void keys_free(struct keylist *k)
{
	for (size_t i = 0; i < k->n; i++)
		free(k->v[i]);
	free(k->v);
}

/* The destination a record key stands for ("metadata/a/b.raw.json" ->
 * "a/b.raw"), in buf; NULL when the key is not a record key. */
static const char *record_destination(const char *key, char *buf, size_t cap)
{
	size_t pl = strlen(META_PREFIX), sl = strlen(META_SUFFIX), n = strlen(key);
	if (n <= pl + sl || strncmp(key, META_PREFIX, pl) || strcmp(key + n - sl, META_SUFFIX) ||
	    n - pl - sl >= cap)
		return NULL;
	memcpy(buf, key + pl, n - pl - sl);
	buf[n - pl - sl] = '\0';
	return buf;
}

/* Started at least age seconds ago (0: every upload, whatever the clocks say). */
static int stale(const struct s3_upload *u, time_t now, long age)
{
	return age == 0 || (u->initiated && now - u->initiated >= age);
}

static int do_prune(const struct common_opts *common, const struct manifest *m,
                    const struct prune_args *a, struct err *e)
{
	int dry_run = a->dry_run;
	long age = a->upload_age;
	struct s3_config cfg = {0};
	struct s3 *s3 = NULL;
	struct s3_object *imgs = NULL, *metas = NULL;
	struct s3_upload *ups = NULL;
	size_t nimgs = 0, nmetas = 0, nups = 0, nstale = 0, kept = 0;
	struct keylist del_img = {0}, del_meta = {0};
	time_t now = time(NULL);
	char size[32];
	int rc = -1, failed = 0;

	if (cli_s3_config(common, &cfg, e))
		return -1;
	s3 = s3_open(&cfg, e);
	if (!s3)
		goto out;
	if (s3_list(s3, IMAGE_PREFIX, NULL, &imgs, &nimgs, NULL, NULL, e) ||
	    s3_list(s3, META_PREFIX, NULL, &metas, &nmetas, NULL, NULL, e) ||
	    s3_mpu_list(s3, IMAGE_PREFIX, &ups, &nups, e)) {
		err_prefix(e, "listing bucket %s", cfg.bucket);
		goto out;
	}
	for (size_t i = 0; i < nimgs; i++) {
		const char *dest;
		if (strncmp(imgs[i].key, IMAGE_PREFIX, strlen(IMAGE_PREFIX)))
			continue; /* s3_list drops those: prune never touches them */
		dest = imgs[i].key + strlen(IMAGE_PREFIX);
		if (!*dest || dest[strlen(dest) - 1] == '/')
			continue;
		if (manifest_find_destination(m, dest)) {
			kept++;
			continue;
		}
		if (keys_add(&del_img, imgs[i].key, imgs[i].size))
			goto oom;
	}
	for (size_t i = 0; i < nmetas; i++) {
		char buf[2048];
		const char *dest;
		/* previous versions' records: only retention may let them go,
		 * and prune does not apply it yet (docs/design.md) */
		if (!strncmp(metas[i].key, RECORD_VERSION_META_PREFIX,
		             strlen(RECORD_VERSION_META_PREFIX))) {
			log_debug("leaving %s alone: a previous version's record", metas[i].key);
			continue;
		}
		dest = record_destination(metas[i].key, buf, sizeof(buf));
		if (!dest) {
			log_warn("leaving %s alone: not a checksum record name", metas[i].key);
			continue;
		}
		if (manifest_find_destination(m, dest))
			continue;
		if (keys_add(&del_meta, metas[i].key, metas[i].size))
			goto oom;
	}
	{
		/* as for objects: a server that answers with uploads outside
		 * the prefix asked for does not get us to abort them */
		size_t w = 0;
		for (size_t i = 0; i < nups; i++) {
			if (!strncmp(ups[i].key, IMAGE_PREFIX, strlen(IMAGE_PREFIX))) {
				ups[w++] = ups[i];
				continue;
			}
			log_debug("leaving the upload of '%s' alone: outside %s", ups[i].key,
			          IMAGE_PREFIX);
			free(ups[i].key);
			free(ups[i].upload_id);
		}
		nups = w;
	}
	for (size_t i = 0; i < nups; i++)
		if (stale(&ups[i], now, age))
			nstale++;

	printf("%s%zu image%s to delete, %zu record%s to delete, %zu stale multipart upload%s "
	       "to abort; %zu image%s kept\n",
	       dry_run ? "dry run: " : "", del_img.n, del_img.n == 1 ? "" : "s", del_meta.n,
	       del_meta.n == 1 ? "" : "s", nstale, nstale == 1 ? "" : "s", kept,
	       kept == 1 ? "" : "s");
	for (size_t i = 0; i < del_img.n; i++)
		printf("  %s %s\n", dry_run ? "would delete" : "delete", del_img.v[i]);
	for (size_t i = 0; i < del_meta.n; i++)
		printf("  %s %s\n", dry_run ? "would delete" : "delete", del_meta.v[i]);
	for (size_t i = 0; i < nups; i++)
		if (stale(&ups[i], now, age))
			printf("  %s the upload of %s started %.1f h ago\n",
			       dry_run ? "would abort" : "abort", ups[i].key,
			       (now - ups[i].initiated) / 3600.0);
	if (dry_run) {
		rc = 0;
		goto out;
	}
	/* records first: an image without a record is no longer served, so
	 * readers never see a record whose object is gone */
	if (del_meta.n && s3_delete_many(s3, del_meta.v, del_meta.n, e)) {
		err_prefix(e, "deleting records");
		goto out;
	}
	if (del_img.n && s3_delete_many(s3, del_img.v, del_img.n, e)) {
		err_prefix(e, "deleting images");
		goto out;
	}
	for (size_t i = 0; i < nups; i++) {
		struct err ae = {0};
		if (!stale(&ups[i], now, age))
			continue;
		if (s3_mpu_abort(s3, ups[i].key, ups[i].upload_id, &ae) &&
		    ae.code != ERR_NOTFOUND) {
			log_error("aborting the upload of %s: %s", ups[i].key, ae.msg);
			failed++;
		}
	}
	/* the index may name deleted records (harmless: readers check it
	 * against the listing), but it should not keep them */
	if (del_meta.n || del_img.n)
		bucket_index_refresh(&cfg, s3);
	size_format(del_img.bytes, size, sizeof(size));
	printf("deleted %zu image%s (%s) and %zu record%s; aborted %zu upload%s\n", del_img.n,
	       del_img.n == 1 ? "" : "s", size, del_meta.n, del_meta.n == 1 ? "" : "s",
	       nstale - failed, nstale - failed == 1 ? "" : "s");
	if (failed) {
		err_set(e, ERR_NET, "%d multipart upload%s could not be aborted", failed,
		        failed == 1 ? "" : "s");
		goto out;
	}
	rc = 0;
	goto out;
oom:
	err_set(e, ERR_IO, "out of memory");
out:
	keys_free(&del_img);
	keys_free(&del_meta);
	s3_objects_free(imgs, nimgs);
	s3_objects_free(metas, nmetas);
	s3_uploads_free(ups, nups);
	s3_close(s3);
	s3_config_free(&cfg);
	return rc;
}

int cmd_prune(int argc, char **argv)
{
	struct common_opts common = {0};
	struct manifest *m = NULL;
	struct prune_args a = {0, STALE_UPLOADS};
	struct err e = {0};
	int rc = cli_parse(&prune_spec, argc, argv, &common, prune_opt, &a, &e);
	if (rc)
		return rc > 0 ? 0 : cli_fail(&e);
	if (cli_load_manifest(&common, &m, &e)) {
		err_prefix(&e, "images prune: refusing to delete anything");
		return cli_fail(&e);
	}
	if (manifest_names_no_images(m)) {
		err_set(&e, ERR_INVALID,
		        "images prune: refusing to delete anything: %s names no images (pruning "
		        "would empty the bucket)",
		        m->path);
		manifest_free(m);
		return cli_fail(&e);
	}
	rc = do_prune(&common, m, &a, &e) ? cli_fail(&e) : 0;
	manifest_free(m);
	return rc;
}
