/* labctl images prune [--manifest PATH] [--credentials PATH] [--sops-age-key-file PATH]
 *                     [--dry-run] [--json] [--upload-age SECONDS]
 *
 * Deletes only what labctl manages and nothing still wanted (docs/design.md,
 * "Retention and prune"):
 *   - images of origin manifest that the manifest no longer names: first kept
 *     as a previous version (server-side copy), then removed from images/;
 *   - previous versions beyond retention (per destination, newest replacedAt
 *     first; keepDays keeps younger ones);
 *   - upload images that a spec.uploads rule lets go;
 *   - records whose object is gone (what an interrupted prune leaves).
 * Upload images no rule covers and objects without a valid record are left
 * alone and listed as such.  Bytes go before their record: a record without
 * its object is never served, and the next prune deletes it; the other order
 * would leave bytes without a record, which prune must leave alone. */
#include "common/log.h"
#include "common/size.h"
#include "common/timefmt.h"
#include "manifest/manifest.h"
#include "store/record.h"
#include "store/record_index.h"
#include "sync/bucket.h"
#include "sync/cli.h"
#include "sync/commands.h"
#include "sync/pipeline.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IMAGE_PREFIX  "images/"
#define META_PREFIX   "metadata/"
#define META_SUFFIX   ".json"
#define STALE_UPLOADS (24 * 3600)
#define DAY           86400

enum { OPT_DRY_RUN = 1, OPT_UPLOAD_AGE, OPT_JSON };

struct prune_args {
	int dry_run, json;
	long upload_age;
};

static const struct optdef prune_opts[] = {
        CLI_OPT_MANIFEST,
        CLI_OPT_CREDENTIALS,
        CLI_OPT_SOPS_AGE_KEY_FILE,
        {"dry-run", OPT_DRY_RUN, 0, NULL, "print the plan and change nothing"},
        {"json", OPT_JSON, 0, NULL, "print one JSON document on stdout instead of the plan"},
        {"upload-age", OPT_UPLOAD_AGE, 1, "SECONDS",
         "abort multipart uploads started longer ago than this (default 86400: 24 h)"},
        CLI_OPT_CA_BUNDLE,
        CLI_OPT_END,
};

static const struct cmd_spec prune_spec = {
        "images prune",
        "[--manifest PATH] [--credentials PATH] [--sops-age-key-file PATH] [--dry-run] "
        "[--json]",
        "Delete what labctl manages and nobody wants any more: images of origin manifest\n"
        "that the manifest no longer names (kept as a previous version first), previous\n"
        "versions beyond retention (spec.retention, an image's retention), upload images\n"
        "a spec.uploads rule lets go, records whose object is gone; abort multipart\n"
        "uploads older than 24 hours (--upload-age).  Upload images no rule covers and\n"
        "objects without a valid record are left alone (and listed).  Refuses (exit 2,\n"
        "deletes nothing) when the manifest is invalid or names no images.  Keys outside\n"
        "images/, metadata/ and versions/ are never touched, except the record index\n"
        "(index/records.json.gz), which is rebuilt after a change.",
        prune_opts,
};

static int prune_opt(void *ud, int id, const char *v, struct err *e)
{
	struct prune_args *a = ud;
	if (id == OPT_DRY_RUN)
		a->dry_run = 1;
	else if (id == OPT_JSON)
		a->json = 1;
	else if (id == OPT_UPLOAD_AGE)
		return cli_parse_int("upload-age", v, 0, 10L * 365 * 86400, &a->upload_age, e);
	return 0;
}

enum act { A_KEEP, A_RETIRE, A_DELETE, A_LEAVE, A_ABORT };
enum kind { K_IMAGE, K_VERSION, K_RECORD, K_UPLOAD };

struct entry {
	enum kind kind;
	enum act act;
	char *key;         /* the object (or record, K_RECORD; upload key, K_UPLOAD) */
	char *meta;        /* its record, or NULL */
	char *destination; /* or NULL */
	char *name;        /* the record's, or NULL */
	char *upload_id;   /* K_UPLOAD */
	char reason[600];
	char error[ERR_MSG_MAX];
	uint64_t size;
	/* for ordering: uploadedAt (uploads), replacedAt (versions) */
	time_t when;
	char hex[65]; /* sha256 of a version / a retired image */
	struct s3_object obj;
	struct record rec; /* K_IMAGE to retire */
	const struct mf_upload_rule *rule;
	long keep_versions, keep_days; /* K_VERSION: the retention that applies */
};

struct plan {
	struct entry *v;
	size_t n, cap;
};

static struct entry *plan_add(struct plan *p, enum kind kind, const char *key, const char *meta,
                              const char *dest, struct err *e)
{
	struct entry *en;
	if (p->n == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 64;
		struct entry *nv = realloc(p->v, cap * sizeof(*nv));
		if (!nv)
			goto oom;
		p->v = nv;
		p->cap = cap;
	}
	en = &p->v[p->n];
	memset(en, 0, sizeof(*en));
	en->kind = kind;
	en->key = strdup(key);
	en->meta = meta ? strdup(meta) : NULL;
	en->destination = dest ? strdup(dest) : NULL;
	p->n++;
	if (!en->key || (meta && !en->meta) || (dest && !en->destination))
		goto oom;
	return en;
oom:
	err_set(e, ERR_IO, "out of memory");
	return NULL;
}

static void plan_free(struct plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		struct entry *en = &p->v[i];
		free(en->key);
		free(en->meta);
		free(en->destination);
		free(en->name);
		free(en->upload_id);
		free(en->obj.key);
		record_free(&en->rec);
	}
	free(p->v);
}

static int set_name(struct entry *en, const char *name, struct err *e)
{
	if (name && !(en->name = strdup(name)))
		return err_set(e, ERR_IO, "out of memory");
	return 0;
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

static int has_prefix(const char *s, const char *p)
{
	return !strncmp(s, p, strlen(p));
}

static int cmp_key(const void *a, const void *b)
{
	return strcmp(((const struct s3_object *)a)->key, ((const struct s3_object *)b)->key);
}

static const struct s3_object *find_obj(const struct s3_object *v, size_t n, const char *key)
{
	struct s3_object k = {0};
	k.key = (char *)key;
	return n ? bsearch(&k, v, n, sizeof(*v), cmp_key) : NULL;
}

/* Current images: keep what the manifest names, retire manifest images it
 * no longer names, sort uploads to their rules, leave the rest alone. */
static int plan_images(const struct manifest *m, const struct bucket_image *imgs, size_t n,
                       struct plan *p, struct err *e)
{
	for (size_t i = 0; i < n; i++) {
		const struct bucket_image *im = &imgs[i];
		char *key = record_image_key(im->destination),
		     *meta = record_meta_key(im->destination);
		struct entry *en = NULL;
		const char *origin;
		enum hash_alg alg;
		char hex[HASH_MAX_HEX];
		if (!key || !meta)
			err_set(e, ERR_IO, "out of memory");
		else
			en = plan_add(p, K_IMAGE, key, meta, im->destination, e);
		free(key);
		free(meta);
		if (!en)
			return -1;
		en->size = im->size;
		if (im->has_record && set_name(en, im->rec.name, e))
			return -1;
		if (manifest_find_destination(m, im->destination)) {
			en->act = A_KEEP;
			snprintf(en->reason, sizeof(en->reason), "named by the manifest");
			continue;
		}
		if (!im->complete) {
			en->act = A_LEAVE;
			snprintf(en->reason, sizeof(en->reason), "%s", im->problem);
			continue;
		}
		origin = record_origin(&im->rec);
		time_parse_rfc3339(im->rec.uploaded_at, &en->when);
		if (!strcmp(origin, RECORD_ORIGIN_UPLOAD)) {
			en->rule = manifest_upload_rule(m, im->destination);
			en->act = en->rule ? A_KEEP : A_LEAVE;
			if (!en->rule)
				snprintf(en->reason, sizeof(en->reason),
				         "an upload image that no spec.uploads rule covers");
			continue;
		}
		/* origin manifest, no longer named */
		if (hash_checksum_parse(im->rec.checksum, &alg, hex) || alg != HASH_SHA256) {
			en->act = A_DELETE;
			snprintf(
			        en->reason, sizeof(en->reason),
			        "no longer in the manifest; its %s record has no by-sha256 name to "
			        "keep as a version",
			        hash_alg_name(alg));
			continue;
		}
		if (m->retention.keep_versions == 0 && m->retention.keep_days == 0) {
			en->act = A_DELETE;
			snprintf(en->reason, sizeof(en->reason),
			         "no longer in the manifest; spec.retention keeps no versions");
			continue;
		}
		en->act = A_RETIRE;
		memcpy(en->hex, hex, 65);
		en->when = time(NULL);
		snprintf(en->reason, sizeof(en->reason),
		         "no longer in the manifest: kept as a previous version (versions/%s)",
		         hex);
		en->obj.size = im->size;
		memcpy(en->obj.etag, im->etag, S3_ETAG_MAX);
		if (!(en->obj.key = strdup(en->key)))
			return err_set(e, ERR_IO, "out of memory");
		/* the record to keep: a copy that the version's fields go into */
		{
			char *json = record_to_json(&im->rec, e);
			int rc = json ? record_parse(json, strlen(json), &en->rec, e) : -1;
			free(json);
			if (rc)
				return -1;
		}
	}
	return 0;
}

static int cmp_when_desc(const void *a, const void *b)
{
	const struct entry *x = *(const struct entry *const *)a,
	                   *y = *(const struct entry *const *)b;
	if (x->when != y->when)
		return x->when < y->when ? 1 : -1;
	return strcmp(x->key, y->key);
}

/* Upload images under each rule: the newest `keep` stay, and every one
 * younger than keepDays; the others go. */
static int apply_upload_rules(const struct manifest *m, struct plan *p, time_t now, struct err *e)
{
	struct entry **g = calloc(p->n + 1, sizeof(*g));
	if (!g)
		return err_set(e, ERR_IO, "out of memory");
	for (size_t r = 0; r < m->nuploads; r++) {
		const struct mf_upload_rule *rule = &m->uploads[r];
		size_t k = 0;
		for (size_t i = 0; i < p->n; i++)
			if (p->v[i].kind == K_IMAGE && p->v[i].rule == rule)
				g[k++] = &p->v[i];
		qsort(g, k, sizeof(*g), cmp_when_desc);
		for (size_t i = 0; i < k; i++) {
			int young = rule->keep_days && now - g[i]->when < rule->keep_days * DAY;
			if ((long)i < rule->keep || young) {
				g[i]->act = A_KEEP;
				snprintf(g[i]->reason, sizeof(g[i]->reason), "spec.uploads %s: %s",
				         rule->prefix,
				         (long)i < rule->keep ? "among the newest it keeps"
				                              : "younger than its keepDays");
			} else {
				g[i]->act = A_DELETE;
				snprintf(g[i]->reason, sizeof(g[i]->reason),
				         "spec.uploads %s lets it go (keep %ld, keepDays %ld)",
				         rule->prefix, rule->keep, rule->keep_days);
			}
		}
	}
	free(g);
	return 0;
}

/* versions/<hex> with their records: valid ones are judged by retention,
 * the others left alone; records whose version object is gone deleted. */
static int plan_versions(struct s3 *s3, const struct manifest *m, struct plan *p, struct err *e)
{
	struct s3_object *objs = NULL, *metas = NULL;
	size_t nobjs = 0, nmetas = 0;
	int rc = -1;
	if (s3_list(s3, RECORD_VERSIONS_PREFIX, NULL, &objs, &nobjs, NULL, NULL, e) ||
	    s3_list(s3, RECORD_VERSION_META_PREFIX, NULL, &metas, &nmetas, NULL, NULL, e))
		goto out;
	if (nobjs)
		qsort(objs, nobjs, sizeof(*objs), cmp_key);
	for (size_t i = 0; i < nobjs; i++) {
		const char *hex = objs[i].key + strlen(RECORD_VERSIONS_PREFIX);
		char *mkey = record_version_meta_key(hex), *data = NULL;
		struct entry *en = mkey ? plan_add(p, K_VERSION, objs[i].key, NULL, NULL, e) : NULL;
		struct record r = {0};
		struct err ge = {0};
		const struct mf_image *img;
		size_t len = 0;
		int ok;
		if (!en) {
			free(mkey);
			if (!e->code)
				err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		en->size = objs[i].size;
		ok = find_obj(metas, nmetas, mkey) &&
		     !s3_get_all(s3, mkey, RECINDEX_MAX_RECORD, &data, &len, NULL, &ge) &&
		     !record_parse(data, len, &r, &ge) &&
		     !record_matches_object(&r, objs[i].size, objs[i].etag, &ge) && r.destination &&
		     r.replaced_at[0] && !strncmp(r.checksum, "sha256:", 7) &&
		     !strcmp(r.checksum + 7, hex);
		free(data);
		if (!ok) {
			free(mkey);
			record_free(&r);
			if (ge.code && ge.code != ERR_NOTFOUND && ge.code != ERR_INVALID &&
			    ge.code != ERR_INTEGRITY && ge.code != ERR_PRECONDITION) {
				*e = ge;
				goto out;
			}
			en->act = A_LEAVE;
			snprintf(en->reason, sizeof(en->reason), "no valid version record: %.300s",
			         ge.code ? ge.msg
			                 : "metadata/versions/<hex>.json is missing or does not "
			                   "name "
			                   "this version");
			continue;
		}
		en->meta = mkey;
		en->destination = strdup(r.destination);
		if (!en->destination || set_name(en, r.name, e)) {
			record_free(&r);
			if (!e->code)
				err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		time_parse_rfc3339(r.replaced_at, &en->when);
		snprintf(en->hex, sizeof(en->hex), "%s", hex);
		img = manifest_find_destination(m, r.destination);
		en->keep_versions = img ? img->retention.keep_versions : m->retention.keep_versions;
		en->keep_days = img ? img->retention.keep_days : m->retention.keep_days;
		record_free(&r);
	}
	for (size_t i = 0; i < nmetas; i++) {
		const char *k = metas[i].key + strlen(RECORD_VERSION_META_PREFIX);
		size_t l = strlen(k);
		char key[128];
		struct entry *en;
		if (l <= strlen(META_SUFFIX) || l - strlen(META_SUFFIX) >= 100 ||
		    strcmp(k + l - strlen(META_SUFFIX), META_SUFFIX))
			continue;
		snprintf(key, sizeof(key), RECORD_VERSIONS_PREFIX "%.*s",
		         (int)(l - strlen(META_SUFFIX)), k);
		if (find_obj(objs, nobjs, key))
			continue;
		if (!(en = plan_add(p, K_RECORD, metas[i].key, NULL, NULL, e)))
			goto out;
		en->act = A_DELETE;
		en->size = metas[i].size;
		snprintf(en->reason, sizeof(en->reason),
		         "a version record whose object (%s) is gone", key);
	}
	rc = 0;
out:
	s3_objects_free(objs, nobjs);
	s3_objects_free(metas, nmetas);
	return rc;
}

/* Per destination, newest replacedAt first (an image retired now is the
 * newest): keepVersions stay, and those replaced less than keepDays ago. */
static int apply_retention(struct plan *p, time_t now, struct err *e)
{
	struct entry **g = calloc(p->n + 1, sizeof(*g));
	char *done = calloc(p->n + 1, 1);
	if (!g || !done) {
		free(g);
		free(done);
		return err_set(e, ERR_IO, "out of memory");
	}
	for (size_t i = 0; i < p->n; i++) {
		const char *dest;
		size_t k = 0;
		long keep = 0, days = 0;
		if (done[i] || !p->v[i].destination || !p->v[i].meta ||
		    !(p->v[i].kind == K_VERSION || p->v[i].act == A_RETIRE))
			continue;
		dest = p->v[i].destination;
		for (size_t j = i; j < p->n; j++) {
			struct entry *en = &p->v[j];
			if (done[j] || !en->destination || strcmp(en->destination, dest) ||
			    !en->meta || !(en->kind == K_VERSION || en->act == A_RETIRE))
				continue;
			done[j] = 1;
			g[k++] = en;
			if (en->kind == K_VERSION) {
				keep = en->keep_versions;
				days = en->keep_days;
			}
		}
		qsort(g, k, sizeof(*g), cmp_when_desc);
		for (size_t j = 0, rank = 0; j < k; j++) {
			struct entry *en = g[j];
			int young;
			if (en->act == A_RETIRE) {
				rank++;
				continue;
			}
			/* the version an image is retired into now is that image's */
			for (size_t r = 0; r < k; r++)
				if (g[r]->act == A_RETIRE && !strcmp(g[r]->hex, en->hex))
					goto keep_it;
			young = days && now - en->when < days * DAY;
			if ((long)rank < keep || young) {
			keep_it:
				en->act = A_KEEP;
				snprintf(en->reason, sizeof(en->reason),
				         "previous version of %s kept by retention (keepVersions "
				         "%ld, "
				         "keepDays %ld)",
				         dest, keep, days);
			} else {
				en->act = A_DELETE;
				snprintf(en->reason, sizeof(en->reason),
				         "previous version of %s beyond retention (keepVersions "
				         "%ld, "
				         "keepDays %ld)",
				         dest, keep, days);
			}
			rank++;
		}
	}
	free(g);
	free(done);
	return 0;
}

/* Records of metadata/ whose object is gone (and not named), and keys there
 * that are no record names. */
static int plan_records(const struct manifest *m, const struct s3_object *metas, size_t nmetas,
                        const struct bucket_image *imgs, size_t nimgs, struct plan *p,
                        struct err *e)
{
	for (size_t i = 0; i < nmetas; i++) {
		char buf[2048];
		const char *dest;
		struct entry *en;
		size_t j;
		if (has_prefix(metas[i].key, RECORD_VERSION_META_PREFIX))
			continue; /* plan_versions */
		dest = record_destination(metas[i].key, buf, sizeof(buf));
		if (!dest) {
			if (!(en = plan_add(p, K_RECORD, metas[i].key, NULL, NULL, e)))
				return -1;
			en->act = A_LEAVE;
			snprintf(en->reason, sizeof(en->reason), "not a checksum record name");
			continue;
		}
		for (j = 0; j < nimgs; j++)
			if (!strcmp(imgs[j].destination, dest))
				break;
		if (j < nimgs || manifest_find_destination(m, dest))
			continue;
		if (!(en = plan_add(p, K_RECORD, metas[i].key, NULL, dest, e)))
			return -1;
		en->act = A_DELETE;
		en->size = metas[i].size;
		snprintf(en->reason, sizeof(en->reason), "a record whose image object is gone");
	}
	return 0;
}

static const char *act_word(const struct entry *en, int dry_run)
{
	if (en->error[0])
		return "failed";
	switch (en->act) {
	case A_KEEP: return dry_run ? "keep" : "kept";
	case A_RETIRE: return dry_run ? "retire" : "retired";
	case A_DELETE: return dry_run ? "delete" : "deleted";
	case A_LEAVE: return dry_run ? "leave alone" : "left alone";
	case A_ABORT: return dry_run ? "abort" : "aborted";
	}
	return "?";
}

static const char *kind_word(enum kind k)
{
	switch (k) {
	case K_IMAGE: return "image";
	case K_VERSION: return "version";
	case K_RECORD: return "record";
	case K_UPLOAD: return "upload";
	}
	return "?";
}

static json_t *str_or_null(const char *s)
{
	return s && *s ? json_string(s) : json_null();
}

static void print_json(const char *manifest, const struct plan *p, int dry_run)
{
	json_t *doc = json_pack("{s:s, s:b}", "manifest", manifest, "dryRun", dry_run);
	json_t *arr = json_array();
	for (size_t i = 0; i < p->n; i++) {
		const struct entry *en = &p->v[i];
		json_t *o = json_object();
		json_object_set_new(o, "name", str_or_null(en->name));
		json_object_set_new(o, "destination", str_or_null(en->destination));
		json_object_set_new(o, "key", json_string(en->key));
		json_object_set_new(o, "kind", json_string(kind_word(en->kind)));
		json_object_set_new(o, "action", json_string(act_word(en, dry_run)));
		json_object_set_new(o, "reason", str_or_null(en->reason));
		json_object_set_new(o, "error", str_or_null(en->error));
		json_array_append_new(arr, o);
	}
	json_object_set_new(doc, "images", arr);
	json_dumpf(doc, stdout, JSON_INDENT(2));
	fputc('\n', stdout);
	json_decref(doc);
}

static void print_plan(const struct plan *p, int dry_run)
{
	size_t count[5] = {0};
	for (size_t i = 0; i < p->n; i++)
		count[p->v[i].act]++;
	printf("%s%zu to delete, %zu to retire (kept as a previous version first), %zu upload%s "
	       "to abort, %zu left alone; %zu kept\n",
	       dry_run ? "dry run: " : "", count[A_DELETE], count[A_RETIRE], count[A_ABORT],
	       count[A_ABORT] == 1 ? "" : "s", count[A_LEAVE], count[A_KEEP]);
	for (int a = A_RETIRE; a <= A_ABORT; a++)
		for (size_t i = 0; i < p->n; i++) {
			const struct entry *en = &p->v[i];
			if ((int)en->act != a)
				continue;
			printf("  %s %s%s: %s\n",
			       a == A_RETIRE   ? (dry_run ? "would retire" : "retire")
			       : a == A_DELETE ? (dry_run ? "would delete" : "delete")
			       : a == A_ABORT  ? (dry_run ? "would abort" : "abort")
			                       : "leave alone",
			       en->key, en->meta && a == A_DELETE ? " (and its record)" : "",
			       en->reason);
		}
}

/* Delete keys[0..n) (batches); a failure marks every entry of the batch. */
static int delete_keys(struct s3 *s3, char **keys, struct entry **owners, size_t n, struct err *e)
{
	struct err de = {0};
	if (!n || !s3_delete_many(s3, keys, n, &de))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!owners[i]->error[0])
			snprintf(owners[i]->error, sizeof(owners[i]->error), "%s", de.msg);
	*e = de;
	return -1;
}

/* Carry out the plan: retire, then every object, then the records of the
 * objects that are gone (bytes first: see the top of the file). */
static int execute(struct s3 *s3, struct plan *p, size_t *failed)
{
	char **keys = calloc(p->n + 1, sizeof(*keys));
	struct entry **owners = calloc(p->n + 1, sizeof(*owners));
	struct err e = {0};
	size_t k = 0;
	if (!keys || !owners) {
		free(keys);
		free(owners);
		*failed = p->n;
		return -1;
	}
	for (size_t i = 0; i < p->n; i++) {
		struct entry *en = &p->v[i];
		struct err ke = {0};
		if (en->act != A_RETIRE)
			continue;
		if (pipeline_keep_version(s3, en->destination, &en->obj, &en->rec, &ke))
			snprintf(
			        en->error, sizeof(en->error),
			        "keeping it as a previous version failed (nothing deleted): %.900s",
			        ke.msg);
	}
	/* bytes */
	for (size_t i = 0; i < p->n; i++) {
		struct entry *en = &p->v[i];
		if ((en->act == A_RETIRE || en->act == A_DELETE) && !en->error[0] &&
		    en->kind != K_RECORD) {
			keys[k] = en->key;
			owners[k++] = en;
		}
	}
	delete_keys(s3, keys, owners, k, &e);
	/* then the records of the bytes that are gone, and dangling records */
	k = 0;
	for (size_t i = 0; i < p->n; i++) {
		struct entry *en = &p->v[i];
		if ((en->act == A_RETIRE || en->act == A_DELETE) && !en->error[0]) {
			keys[k] = en->kind == K_RECORD ? en->key : en->meta;
			owners[k] = en;
			k += keys[k] != NULL;
		}
	}
	delete_keys(s3, keys, owners, k, &e);
	free(keys);
	free(owners);
	for (size_t i = 0; i < p->n; i++)
		*failed += p->v[i].error[0] != 0;
	return *failed ? -1 : 0;
}

static int do_prune(const struct common_opts *common, const struct manifest *m,
                    const struct prune_args *a, struct err *e)
{
	int dry_run = a->dry_run;
	long age = a->upload_age;
	struct s3_config cfg = {0};
	struct s3 *s3 = NULL;
	struct s3_object *metas = NULL;
	struct bucket_image *imgs = NULL;
	struct s3_upload *ups = NULL;
	struct plan p = {0};
	size_t nimgs = 0, nmetas = 0, nups = 0, failed = 0, changed = 0;
	time_t now = time(NULL);
	int rc = -1;

	if (cli_s3_config(common, &cfg, e))
		return -1;
	s3 = s3_open(&cfg, e);
	if (!s3)
		goto out;
	if (bucket_scan(&cfg, s3, &imgs, &nimgs, e) ||
	    s3_list(s3, META_PREFIX, NULL, &metas, &nmetas, NULL, NULL, e) ||
	    s3_mpu_list(s3, IMAGE_PREFIX, &ups, &nups, e)) {
		err_prefix(e, "listing bucket %s", cfg.bucket);
		goto out;
	}
	if (plan_images(m, imgs, nimgs, &p, e) || apply_upload_rules(m, &p, now, e) ||
	    plan_versions(s3, m, &p, e) || apply_retention(&p, now, e) ||
	    plan_records(m, metas, nmetas, imgs, nimgs, &p, e)) {
		err_prefix(e, "planning the prune of bucket %s", cfg.bucket);
		goto out;
	}
	for (size_t i = 0; i < nups; i++) {
		struct entry *en;
		/* as for objects: a server that answers with uploads outside the
		 * prefix asked for does not get us to abort them */
		if (!has_prefix(ups[i].key, IMAGE_PREFIX) || !stale(&ups[i], now, age))
			continue;
		if (!(en = plan_add(&p, K_UPLOAD, ups[i].key, NULL,
		                    ups[i].key + strlen(IMAGE_PREFIX), e)))
			goto out;
		en->act = A_ABORT;
		if (!(en->upload_id = strdup(ups[i].upload_id))) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		snprintf(en->reason, sizeof(en->reason), "a multipart upload started %.1f h ago",
		         (now - ups[i].initiated) / 3600.0);
	}
	if (!dry_run) {
		execute(s3, &p, &failed);
		for (size_t i = 0; i < p.n; i++) {
			struct entry *en = &p.v[i];
			struct err ae = {0};
			if (en->act != A_ABORT)
				continue;
			if (s3_mpu_abort(s3, en->key, en->upload_id, &ae) &&
			    ae.code != ERR_NOTFOUND) {
				snprintf(en->error, sizeof(en->error), "%s", ae.msg);
				failed++;
			}
		}
		for (size_t i = 0; i < p.n; i++)
			changed += p.v[i].act == A_RETIRE || p.v[i].act == A_DELETE;
		/* the index may name deleted records (harmless: readers check it
		 * against the listing), but it should not keep them */
		if (changed)
			bucket_index_refresh(&cfg, s3);
	}
	if (a->json) {
		print_json(m->path, &p, dry_run);
	} else {
		print_plan(&p, dry_run);
		for (size_t i = 0; i < p.n; i++)
			if (p.v[i].error[0])
				log_error("%s: %s", p.v[i].key, p.v[i].error);
	}
	if (failed) {
		err_set(e, ERR_NET, "%zu of the planned change%s failed (see above)", failed,
		        failed == 1 ? "" : "s");
		goto out;
	}
	rc = 0;
out:
	plan_free(&p);
	bucket_images_free(imgs, nimgs);
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
	struct prune_args a = {0, 0, STALE_UPLOADS};
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
