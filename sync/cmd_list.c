/* labctl images list [--json] */
#include "common/log.h"
#include "common/size.h"
#include "store/record.h"
#include "sync/bucket.h"
#include "sync/cli.h"
#include "sync/commands.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OPT_JSON = 1, OPT_VERSIONS };

struct list_args {
	int json, versions;
};

static const struct optdef list_opts[] = {
        {"json", OPT_JSON, 0, NULL, "print one JSON array (for scripts)"},
        {"versions", OPT_VERSIONS, 0, NULL,
         "also list the previous versions kept (versions/<sha256-hex>)"},
        CLI_OPT_CREDENTIALS,
        CLI_OPT_SOPS_AGE_KEY_FILE,
        CLI_OPT_CA_BUNDLE,
        CLI_OPT_END,
};

static const struct cmd_spec list_spec = {
        "images list",
        "[--versions] [--json] [--credentials PATH] [--sops-age-key-file PATH] [--ca-bundle FILE]",
        "List every image in the bucket (images/) with its name, destination, size,\n"
        "checksum and upload time.  An image whose checksum record is missing or does not\n"
        "describe the object (an unfinished upload, a foreign object) is incomplete.\n"
        "--json fields: name, destination, size, checksum, uploadedAt, complete, etag,\n"
        "sourceUrl, origin (manifest or upload), manifestChecksum, problem; with --versions also "
        "current (false for a previous\n"
        "version, whose destination is the image it was) and replacedAt.",
        list_opts,
};

static int list_opt(void *ud, int id, const char *v, struct err *e)
{
	(void)v;
	(void)e;
	if (id == OPT_JSON)
		((struct list_args *)ud)->json = 1;
	else if (id == OPT_VERSIONS)
		((struct list_args *)ud)->versions = 1;
	return 0;
}

static json_t *str_or_null(const char *s)
{
	return s && *s ? json_string(s) : json_null();
}

static int print_json(const struct bucket_image *imgs, size_t n, int versions, struct err *e)
{
	json_t *arr = json_array();
	char *text = NULL;
	int rc = -1;
	if (!arr)
		return err_set(e, ERR_IO, "out of memory");
	for (size_t i = 0; i < n; i++) {
		const struct bucket_image *im = &imgs[i];
		const struct record *r = im->complete ? &im->rec : NULL;
		json_t *o = json_object();
		if (!o || json_array_append_new(arr, o))
			goto out;
		json_object_set_new(o, "name", str_or_null(im->has_record ? im->rec.name : NULL));
		json_object_set_new(o, "destination", json_string(im->destination));
		json_object_set_new(o, "size", json_integer((json_int_t)im->size));
		json_object_set_new(o, "checksum", str_or_null(r ? r->checksum : NULL));
		json_object_set_new(o, "uploadedAt", str_or_null(r ? r->uploaded_at : NULL));
		json_object_set_new(o, "complete", json_boolean(im->complete));
		json_object_set_new(o, "etag", str_or_null(im->etag));
		json_object_set_new(o, "sourceUrl", str_or_null(r ? r->source_url : NULL));
		json_object_set_new(o, "origin", str_or_null(r ? record_origin(r) : NULL));
		json_object_set_new(o, "manifestChecksum",
		                    str_or_null(r ? r->manifest_checksum : NULL));
		json_object_set_new(o, "problem", str_or_null(im->complete ? NULL : im->problem));
		if (versions) {
			json_object_set_new(o, "current", json_boolean(!im->rec.replaced_at[0]));
			json_object_set_new(o, "replacedAt",
			                    str_or_null(r ? r->replaced_at : NULL));
		}
	}
	text = json_dumps(arr, JSON_INDENT(2) | JSON_ENSURE_ASCII);
	if (!text)
		goto out;
	printf("%s\n", text);
	rc = 0;
out:
	if (rc)
		err_set(e, ERR_IO, "out of memory");
	free(text);
	json_decref(arr);
	return rc;
}

static void print_table(const struct bucket_image *imgs, size_t n, const char *bucket)
{
	int wn = 4, wd = 11;
	size_t incomplete = 0;
	if (!n) {
		printf("no images in bucket %s\n", bucket);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		int ln = imgs[i].has_record ? (int)strlen(imgs[i].rec.name) : 1;
		int ld = (int)strlen(imgs[i].destination);
		wn = ln > wn ? ln : wn;
		wd = ld > wd ? ld : wd;
	}
	printf("%-*s  %-*s  %10s  %-23s  %-20s  %s\n", wn, "NAME", wd, "DESTINATION", "SIZE",
	       "CHECKSUM", "UPLOADED", "STATUS");
	for (size_t i = 0; i < n; i++) {
		const struct bucket_image *im = &imgs[i];
		char size[32], sum[32];
		size_format(im->size, size, sizeof(size));
		if (im->complete)
			snprintf(sum, sizeof(sum), "%.22s…", im->rec.checksum);
		else
			snprintf(sum, sizeof(sum), "-");
		printf("%-*s  %-*s  %10s  %-*s  %-20s  %s\n", wn,
		       im->has_record ? im->rec.name : "-", wd, im->destination, size,
		       im->complete ? 25 : 23, sum, im->complete ? im->rec.uploaded_at : "-",
		       !im->complete            ? "INCOMPLETE"
		       : im->rec.replaced_at[0] ? "previous version"
		                                : "complete");
		if (!im->complete)
			incomplete++;
	}
	if (incomplete) {
		printf("\n%zu incomplete image(s):\n", incomplete);
		for (size_t i = 0; i < n; i++)
			if (!imgs[i].complete)
				printf("  %s: %s\n", imgs[i].destination, imgs[i].problem);
		printf("('labctl images sync' re-uploads them; 'labctl images prune' removes "
		       "those the manifest does not name)\n");
	}
}

/* The previous versions (versions/<hex> with a record that describes it),
 * appended to *imgs as complete images whose rec.replaced_at is set; the
 * others are left out (prune lists them as left alone). */
static int scan_versions(struct s3 *s3, struct bucket_image **imgs, size_t *n, struct err *e)
{
	struct s3_object *objs = NULL;
	size_t nobjs = 0;
	int rc = -1;
	if (s3_list(s3, RECORD_VERSIONS_PREFIX, NULL, &objs, &nobjs, NULL, NULL, e))
		return -1;
	for (size_t i = 0; i < nobjs; i++) {
		const char *hex = objs[i].key + strlen(RECORD_VERSIONS_PREFIX);
		char *mkey = record_version_meta_key(hex), *data = NULL;
		struct bucket_image im = {0}, *nv;
		struct err ge = {0};
		size_t len = 0;
		int ok;
		if (!mkey) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		ok = !s3_get_all(s3, mkey, RECINDEX_MAX_RECORD, &data, &len, NULL, &ge) &&
		     !record_parse(data, len, &im.rec, &ge) &&
		     !record_matches_object(&im.rec, objs[i].size, objs[i].etag, &ge) &&
		     im.rec.destination && im.rec.replaced_at[0] &&
		     !strncmp(im.rec.checksum, "sha256:", 7) && !strcmp(im.rec.checksum + 7, hex);
		free(mkey);
		free(data);
		if (!ok) {
			if (ge.code && ge.code != ERR_NOTFOUND && ge.code != ERR_INVALID) {
				*e = ge;
				record_free(&im.rec);
				goto out;
			}
			log_debug("%s: not a previous version (%s)", objs[i].key,
			          ge.code ? ge.msg : "its record does not name it");
			record_free(&im.rec);
			continue;
		}
		im.destination = strdup(im.rec.destination);
		nv = realloc(*imgs, (*n + 1) * sizeof(**imgs));
		if (!im.destination || !nv) {
			free(im.destination);
			record_free(&im.rec);
			if (nv)
				*imgs = nv;
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		*imgs = nv;
		im.exists = im.has_record = im.complete = 1;
		im.size = objs[i].size;
		memcpy(im.etag, objs[i].etag, S3_ETAG_MAX);
		(*imgs)[(*n)++] = im;
	}
	rc = 0;
out:
	s3_objects_free(objs, nobjs);
	return rc;
}

int cmd_list(int argc, char **argv)
{
	struct common_opts common = {0};
	struct s3_config cfg = {0};
	struct bucket_image *imgs = NULL;
	struct s3 *s3 = NULL;
	size_t n = 0;
	struct err e = {0};
	struct list_args a = {0};
	int rc;

	rc = cli_parse(&list_spec, argc, argv, &common, list_opt, &a, &e);
	if (rc)
		return rc > 0 ? 0 : cli_fail(&e);
	if (cli_s3_config(&common, &cfg, &e))
		return cli_fail(&e);
	rc = 1;
	s3 = s3_open(&cfg, &e);
	if (!s3 || bucket_scan(&cfg, s3, &imgs, &n, &e) ||
	    (a.versions && scan_versions(s3, &imgs, &n, &e))) {
		err_prefix(&e, "listing bucket %s at %s", cfg.bucket, cfg.endpoint);
		rc = cli_fail(&e);
		goto out;
	}
	if (a.json) {
		if (print_json(imgs, n, a.versions, &e)) {
			rc = cli_fail(&e);
			goto out;
		}
	} else {
		print_table(imgs, n, cfg.bucket);
	}
	rc = 0;
out:
	bucket_images_free(imgs, n);
	s3_close(s3);
	s3_config_free(&cfg);
	return rc;
}
