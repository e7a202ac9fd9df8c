#include "sync/bucket.h"

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

/* Read metadata/<dest>.json and judge it against the object in im. */
static int read_record(struct s3 *s3, struct bucket_image *im, struct err *e)
{
	char *key = record_meta_key(im->destination);
	char *json = NULL;
	size_t len = 0;
	struct err pe = {0};
	int rc = -1;
	if (!key)
		return err_set(e, ERR_IO, "out of memory");
	if (s3_get_all(s3, key, &json, &len, NULL, e)) {
		if (e && e->code == ERR_NOTFOUND) {
			snprintf(im->problem, sizeof(im->problem), "no checksum record (%s)", key);
			err_clear(e);
			rc = 0;
		} else {
			err_prefix(e, "reading %s", key);
		}
		goto out;
	}
	rc = 0;
	if (record_parse(json, len, &im->rec, &pe)) {
		record_free(&im->rec);
		memset(&im->rec, 0, sizeof(im->rec));
		snprintf(im->problem, sizeof(im->problem), "invalid checksum record %s: %.300s",
		         key, pe.msg);
		goto out;
	}
	im->has_record = 1;
	if (!im->exists) {
		snprintf(im->problem, sizeof(im->problem), "the record has no image object");
		goto out;
	}
	if (record_matches_object(&im->rec, im->size, im->etag, &pe)) {
		snprintf(im->problem, sizeof(im->problem),
		         "the record does not describe the object: %.400s", pe.msg);
		goto out;
	}
	im->complete = 1;
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

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int bucket_scan(struct s3 *s3, struct bucket_image **out, size_t *n, struct err *e)
{
	struct s3_object *objs = NULL, *metas = NULL;
	size_t nobjs = 0, nmetas = 0, count = 0;
	char **metakeys = NULL;
	struct bucket_image *v = NULL;
	int rc = -1;

	*out = NULL;
	*n = 0;
	if (s3_list(s3, IMAGE_PREFIX, NULL, &objs, &nobjs, NULL, NULL, e) ||
	    s3_list(s3, META_PREFIX, NULL, &metas, &nmetas, NULL, NULL, e))
		goto out;
	metakeys = calloc(nmetas + 1, sizeof(*metakeys));
	v = calloc(nobjs + 1, sizeof(*v));
	if (!metakeys || !v) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < nmetas; i++)
		metakeys[i] = metas[i].key;
	qsort(metakeys, nmetas, sizeof(*metakeys), cmp_str);
	for (size_t i = 0; i < nobjs; i++) {
		struct bucket_image *im = &v[count];
		const char *dest = objs[i].key + strlen(IMAGE_PREFIX);
		char *mk;
		size_t dl = strlen(dest);
		if (strncmp(objs[i].key, IMAGE_PREFIX, strlen(IMAGE_PREFIX)) || !dl ||
		    dest[dl - 1] == '/')
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
		mk = record_meta_key(dest);
		if (!mk) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		if (!bsearch(&mk, metakeys, nmetas, sizeof(*metakeys), cmp_str)) {
			snprintf(im->problem, sizeof(im->problem), "no checksum record (%s)", mk);
			free(mk);
			continue;
		}
		free(mk);
		if (read_record(s3, im, e))
			goto out;
	}
	*out = v;
	*n = count;
	v = NULL;
	count = 0;
	rc = 0;
out:
	bucket_images_free(v, count);
	free(metakeys);
	s3_objects_free(objs, nobjs);
	s3_objects_free(metas, nmetas);
	return rc;
}
