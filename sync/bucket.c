#include "sync/bucket.h"

#include "common/log.h"
#include "store/record_index.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMAGE_PREFIX "images/"
#define META_PREFIX  "metadata/"

void bucket_image_clear(struct bucket_image *im)
{
	free(im->destination);
	record_free(&im->rec);
	memset(im, 0, sizeof(*im));
}

void bucket_images_free(struct bucket_image *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		bucket_image_clear(&v[i]);
	free(v);
}

/* Judge the record text of metadata/<dest>.json (json NULL: there is none)
 * against the object in im. */
static void judge_record(struct bucket_image *im, const char *key, const char *json, size_t len)
{
	struct err pe = {0};
	if (!json) {
		snprintf(im->problem, sizeof(im->problem), "no checksum record (%s)", key);
		return;
	}
	if (record_parse(json, len, &im->rec, &pe)) {
		record_free(&im->rec);
		memset(&im->rec, 0, sizeof(im->rec));
		snprintf(im->problem, sizeof(im->problem), "invalid checksum record %s: %.300s",
		         key, pe.msg);
		return;
	}
	im->has_record = 1;
	if (!im->exists) {
		snprintf(im->problem, sizeof(im->problem), "the record has no image object");
		return;
	}
	if (record_matches_object(&im->rec, im->size, im->etag, &pe)) {
		snprintf(im->problem, sizeof(im->problem),
		         "the record does not describe the object: %.400s", pe.msg);
		return;
	}
	im->complete = 1;
}

/* Read metadata/<dest>.json and judge it against the object in im. */
static int read_record(struct s3 *s3, struct bucket_image *im, struct err *e)
{
	char *key = record_meta_key(im->destination);
	char *json = NULL;
	size_t len = 0;
	int rc = -1;
	if (!key)
		return err_set(e, ERR_IO, "out of memory");
	/* no listing here: only the hard cap */
	if (s3_get_all(s3, key, RECINDEX_MAX_RECORD, &json, &len, NULL, e)) {
		if (e && e->code == ERR_NOTFOUND) {
			judge_record(im, key, NULL, 0);
			err_clear(e);
			rc = 0;
		} else if (e && e->code == ERR_INVALID) { /* too large */
			snprintf(im->problem, sizeof(im->problem),
			         "invalid checksum record %s: %.400s", key, e->msg);
			err_clear(e);
			rc = 0;
		} else {
			err_prefix(e, "reading %s", key);
		}
		goto out;
	}
	judge_record(im, key, json, len);
	rc = 0;
out:
	free(key);
	free(json);
	return rc;
}

int bucket_check(struct s3 *s3, const char *destination, struct bucket_image *out, struct err *e)
{
	struct s3_object obj = {0};
	char *key = record_image_key(destination);
	int rc = -1;
	memset(out, 0, sizeof(*out));
	out->destination = strdup(destination);
	if (!key || !out->destination) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (s3_head(s3, key, &obj, e)) {
		if (!e || e->code != ERR_NOTFOUND) {
			err_prefix(e, "checking %s", key);
			goto out;
		}
		err_clear(e);
		snprintf(out->problem, sizeof(out->problem), "no image object (%s)", key);
	} else {
		out->exists = 1;
		out->size = obj.size;
		memcpy(out->etag, obj.etag, S3_ETAG_MAX);
	}
	rc = read_record(s3, out, e);
out:
	free(obj.key);
	free(key);
	return rc;
}

static int cmp_obj(const void *a, const void *b)
{
	return strcmp(((const struct s3_object *)a)->key, ((const struct s3_object *)b)->key);
}

/* The record of every image in v[] that has one in the listing: from the
 * record index when it holds the listed version, else fetched (in
 * parallel).  A missing or unusable index only means more GETs. */
static int read_records(const struct s3_config *cfg, struct s3 *s3, struct bucket_image *v,
                        size_t n, const struct s3_object *metas, size_t nmetas, struct err *e)
{
	struct recindex ix = {0};
	struct recindex_get *gets = calloc(n + 1, sizeof(*gets));
	struct bucket_image **owner = calloc(n + 1, sizeof(*owner));
	char **keys = calloc(n + 1, sizeof(*keys));
	const struct s3_object **listed = calloc(n + 1, sizeof(*listed));
	size_t *pick = calloc(n + 1, sizeof(*pick)); /* gets[j] is the record of owner[pick[j]] */
	size_t nrec = 0, nget = 0;
	int rc = -1;
	if (!gets || !owner || !keys || !listed || !pick) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct s3_object k = {0};
		const struct s3_object *m;
		if (!(k.key = record_meta_key(v[i].destination))) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		m = nmetas ? bsearch(&k, metas, nmetas, sizeof(k), cmp_obj) : NULL;
		if (!m) {
			judge_record(&v[i], k.key, NULL, 0);
			free(k.key);
			continue;
		}
		owner[nrec] = &v[i];
		listed[nrec] = m;
		keys[nrec++] = k.key;
	}
	if (nrec > RECINDEX_MIN_USE) {
		struct err ie = {0};
		if (recindex_load(s3, metas, nmetas, &ix, &ie) && ie.code != ERR_NOTFOUND)
			log_warn("not using the record index: %s", ie.msg);
	}
	for (size_t i = 0; i < nrec; i++) {
		const struct recindex_entry *en = recindex_lookup(&ix, keys[i], listed[i]->etag);
		if (en) {
			judge_record(owner[i], keys[i], en->json, en->len);
			continue;
		}
		pick[nget] = i;
		gets[nget].size = listed[i]->size;
		gets[nget++].key = keys[i];
	}
	log_debug("%zu checksum record(s): %zu from %s, %zu to fetch", nrec, nrec - nget,
	          RECINDEX_KEY, nget);
	if (nget && recindex_get_many(cfg, s3, gets, nget, e))
		goto out;
	for (size_t j = 0; j < nget; j++) {
		if (!gets[j].json && gets[j].problem[0])
			snprintf(owner[pick[j]]->problem, sizeof(owner[pick[j]]->problem),
			         "invalid checksum record %s", gets[j].problem);
		else
			judge_record(owner[pick[j]], keys[pick[j]], gets[j].json, gets[j].len);
	}
	rc = 0;
out:
	for (size_t i = 0; i < nrec; i++)
		free(keys[i]);
	recindex_gets_free(gets, nget);
	recindex_free(&ix);
	free(owner);
	free(keys);
	free(listed);
	free(pick);
	return rc;
}

int bucket_scan(const struct s3_config *cfg, struct s3 *s3, struct bucket_image **out, size_t *n,
                struct err *e)
{
	struct s3_object *objs = NULL, *metas = NULL;
	size_t nobjs = 0, nmetas = 0, count = 0;
	struct bucket_image *v = NULL;
	int rc = -1;

	*out = NULL;
	*n = 0;
	if (s3_list(s3, IMAGE_PREFIX, NULL, &objs, &nobjs, NULL, NULL, e) ||
	    s3_list(s3, META_PREFIX, NULL, &metas, &nmetas, NULL, NULL, e))
		goto out;
	v = calloc(nobjs + 1, sizeof(*v));
	if (!v) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (nmetas)
		qsort(metas, nmetas, sizeof(*metas), cmp_obj);
	for (size_t i = 0; i < nobjs; i++) {
		struct bucket_image *im = &v[count];
		const char *dest;
		size_t dl;
		if (strncmp(objs[i].key, IMAGE_PREFIX, strlen(IMAGE_PREFIX)))
			continue; /* s3_list drops those; the name is made from the rest */
		dest = objs[i].key + strlen(IMAGE_PREFIX);
		dl = strlen(dest);
		if (!dl || dest[dl - 1] == '/')
			continue; /* a "directory" marker, not an image */
		count++;
		im->destination = strdup(dest);
		if (!im->destination) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		im->exists = 1;
		im->size = objs[i].size;
		memcpy(im->etag, objs[i].etag, S3_ETAG_MAX);
	}
	if (read_records(cfg, s3, v, count, metas, nmetas, e))
		goto out;
	*out = v;
	*n = count;
	v = NULL;
	count = 0;
	rc = 0;
out:
	bucket_images_free(v, count);
	s3_objects_free(objs, nobjs);
	s3_objects_free(metas, nmetas);
	return rc;
}

int bucket_index_update(const struct s3_config *cfg, struct s3 *s3, int create,
                        struct recindex_result *res, struct err *e)
{
	struct s3 *own = NULL;
	int rc = -1;
	if (!s3 && !(s3 = own = s3_open(cfg, e)))
		goto out;
	if (recindex_rebuild(cfg, s3, create, res, e))
		goto out;
	rc = 0;
out:
	if (rc)
		err_prefix(e, "updating the record index %s", RECINDEX_KEY);
	s3_close(own);
	return rc;
}

void bucket_index_refresh(const struct s3_config *cfg, struct s3 *s3)
{
	struct recindex_result r = {0};
	struct err e = {0};
	const char *env = getenv("IMGSTORE_RECORD_INDEX");

	/* Written by default (DESIGN.md lists index/): a fresh mount of a large
	 * bucket should not depend on an opt-in.  IMGSTORE_RECORD_INDEX=off
	 * skips it (a bucket that must hold images/ and metadata/ only).  The
	 * index only makes readers faster: a failure is a warning, never a
	 * failed command. */
	if (env && !strcmp(env, "off")) {
		log_debug("record index %s: not updated (IMGSTORE_RECORD_INDEX=off)", RECINDEX_KEY);
		return;
	}
	if (bucket_index_update(cfg, s3, 1, &r, &e)) {
		log_warn("%s (readers fetch each record instead; 'labctl images index' "
		         "retries)",
		         e.msg);
		return;
	}
	if (r.written || r.records)
		log_info("record index %s: %zu record(s), %zu reused, %zu fetched; %s",
		         RECINDEX_KEY, r.records, r.reused, r.fetched,
		         r.written ? "written" : "already up to date");
}
