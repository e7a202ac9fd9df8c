/* labctl images index [--credentials PATH] [--sops-age-key-file PATH] */
#include "common/size.h"
#include "common/timefmt.h"
#include "store/record_index.h"
#include "sync/bucket.h"
#include "sync/cli.h"
#include "sync/commands.h"

#include <stdio.h>
#include <time.h>

static const struct optdef index_opts[] = {
        CLI_OPT_CREDENTIALS,
        CLI_OPT_SOPS_AGE_KEY_FILE,
        CLI_OPT_CA_BUNDLE,
        CLI_OPT_END,
};

static const struct cmd_spec index_spec = {
        "images index",
        "[--credentials PATH] [--sops-age-key-file PATH] [--ca-bundle FILE]",
        "Create or rebuild the record index " RECINDEX_KEY ": one object with a copy\n"
        "of every checksum record (metadata/) and its ETag, so that imgfs and 'labctl\n"
        "images list' read one object instead of one per record (a fresh mount of a\n"
        "bucket with thousands of images).  Entries whose record is unchanged are kept,\n"
        "the others read again; nothing is written when the index is current.  sync,\n"
        "upload and prune write it too (unless IMGSTORE_RECORD_INDEX=off).  It is only\n"
        "a cache (readers check every entry against the listing): never required.",
        index_opts,
};

static int index_opt(void *ud, int id, const char *v, struct err *e)
{
	(void)ud;
	(void)id;
	(void)v;
	(void)e;
	return 0;
}

int cmd_index(int argc, char **argv)
{
	struct common_opts common = {0};
	struct s3_config cfg = {0};
	struct recindex_result r = {0};
	struct err e = {0};
	char size[32];
	double t0;
	int rc = cli_parse(&index_spec, argc, argv, &common, index_opt, NULL, &e);
	if (rc)
		return rc > 0 ? 0 : cli_fail(&e);
	if (cli_s3_config(&common, &cfg, &e))
		return cli_fail(&e);
	t0 = time_mono();
	if (bucket_index_update(&cfg, NULL, 1, &r, &e)) {
		err_prefix(&e, "bucket %s at %s", cfg.bucket, cfg.endpoint);
		rc = cli_fail(&e);
		goto out;
	}
	size_format(r.bytes, size, sizeof(size));
	if (!r.written && !r.records)
		printf("no checksum records in bucket %s: no index written\n", cfg.bucket);
	else
		printf("%s: %zu record%s (%zu reused, %zu read), %s; %s in %.1f s\n", RECINDEX_KEY,
		       r.records, r.records == 1 ? "" : "s", r.reused, r.fetched, size,
		       r.written ? "written" : "already up to date", time_mono() - t0);
	rc = 0;
out:
	s3_config_free(&cfg);
	return rc;
}
