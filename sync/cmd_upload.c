/* labctl images upload --source FILE --destination DEST [--name NAME] */
#include "common/log.h"
#include "common/size.h"
#include "manifest/manifest.h"
#include "store/record.h"
#include "sync/bucket.h"
#include "sync/cli.h"
#include "sync/commands.h"
#include "sync/interrupt.h"
#include "sync/pipeline.h"
#include "sync/progress.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { OPT_SOURCE = 1, OPT_DESTINATION, OPT_NAME, OPT_CHECKSUM, OPT_PARALLEL, OPT_PART_SIZE };

static const struct optdef upload_opts[] = {
        {"source", OPT_SOURCE, 1, "FILE", "the file to upload ('-' reads standard input)"},
        {"destination", OPT_DESTINATION, 1, "DEST",
         "where it goes: images/DEST, its record metadata/DEST.json"},
        {"name", OPT_NAME, 1, "NAME", "image name for the record (default: DEST's file name)"},
        {"checksum", OPT_CHECKSUM, 1, "ALG:HEX",
         "expected sha256:/sha512: checksum; a mismatch stores nothing"},
        {"parallel", OPT_PARALLEL, 1, "N", "parts uploaded at once (default 3)"},
        {"part-size", OPT_PART_SIZE, 1, "SIZE",
         "multipart part size, 5M to 1G (default: a file in N parts or a multiple of N, "
         "at most 128M each; standard input in 8M parts)"},
        CLI_OPT_CREDENTIALS,
        CLI_OPT_SOPS_AGE_KEY_FILE,
        CLI_OPT_CA_BUNDLE,
        CLI_OPT_END,
};

static const struct cmd_spec upload_spec = {
        "images upload",
        "--source FILE --destination DEST [--name NAME] [--checksum ALG:HEX] [--credentials "
        "PATH] [--sops-age-key-file PATH] [--ca-bundle FILE]",
        "Upload one local file (e.g. Packer output) to images/DEST in one streaming pass:\n"
        "checksum and block map computed on the way, parts uploaded in parallel, the\n"
        "checksum record metadata/DEST.json written last.  A failure leaves nothing behind.",
        upload_opts,
};

struct upload_args {
	const char *source, *destination, *name, *checksum;
	long parallel;
	uint64_t part_size;
};

static int upload_opt(void *ud, int id, const char *v, struct err *e)
{
	struct upload_args *a = ud;
	switch (id) {
	case OPT_SOURCE: a->source = v; break;
	case OPT_DESTINATION: a->destination = v; break;
	case OPT_NAME: a->name = v; break;
	case OPT_CHECKSUM: a->checksum = v; break;
	case OPT_PARALLEL: return cli_parse_int("parallel", v, 1, 16, &a->parallel, e);
	case OPT_PART_SIZE:
		if (size_parse(v, &a->part_size) || a->part_size < (5u << 20) ||
		    a->part_size > (1u << 30))
			return err_set(e, ERR_USAGE, "--part-size '%s' is not a size from 5M to 1G",
			               v);
		return 0;
	}
	return 0;
}

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

static void on_progress(void *ud, uint64_t done)
{
	progress_update(ud, done);
}

/* Anything else (standard input, a pipe, a small file) is read into the
 * pipeline's part buffers. */
static int stream(struct pipeline *p, int fd, const char *source, uint64_t total,
                  struct progress *prog, struct err *e)
{
	for (;;) {
		void *buf;
		size_t avail;
		ssize_t n;
		if (pipeline_buffer(p, &buf, &avail, e))
			return -1;
		n = read(fd, buf, avail);
		if (interrupted()) {
			err_set(e, ERR_NET, "interrupted by %s",
			        interrupted() == SIGINT ? "SIGINT" : "SIGTERM");
			return -1;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err_errno(e, "reading %s", source);
			return -1;
		}
		if (n == 0)
			break;
		if (pipeline_commit(p, n, e))
			return -1;
		progress_update(prog, pipeline_bytes(p));
	}
	if (total && pipeline_bytes(p) != total) {
		err_set(e, ERR_IO, "%s changed size while it was read (%llu bytes, then %llu)",
		        source, (unsigned long long)total, (unsigned long long)pipeline_bytes(p));
		return -1;
	}
	return 0;
}

static int upload_file(const struct upload_args *a, const struct s3_config *cfg, struct err *e)
{
	struct pipeline_opts po = {0};
	struct pipeline *p = NULL;
	struct progress *prog = NULL;
	struct record rec = {0};
	struct stat st;
	enum hash_alg alg = HASH_SHA256;
	char hex[HASH_MAX_HEX], size[32];
	uint64_t total = 0;
	int fd = -1, rc = -1;

	if (a->checksum && hash_checksum_parse(a->checksum, &alg, hex))
		return err_set(e, ERR_USAGE,
		               "--checksum '%s' is not sha256:<64 hex> or sha512:<128 hex>",
		               a->checksum);
	if (!strcmp(a->source, "-")) {
		fd = STDIN_FILENO;
	} else {
		fd = open(a->source, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return err_errno(e, "cannot open --source %s", a->source);
	}
	if (fstat(fd, &st)) {
		err_errno(e, "%s", a->source);
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		err_set(e, ERR_USAGE, "--source %s is a directory", a->source);
		goto out;
	}
	if (S_ISREG(st.st_mode)) {
		total = st.st_size;
		posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	}
	po.cfg = cfg;
	po.destination = a->destination;
	po.name = a->name ? a->name : base_name(a->destination);
	po.origin = RECORD_ORIGIN_UPLOAD;
	po.alg = alg;
	po.expected = a->checksum;
	po.size_hint = total;
	po.workers = (int)a->parallel;
	po.part_size = (size_t)a->part_size;
	p = pipeline_new(&po, e);
	if (!p)
		goto out;
	log_info("uploading %s to images/%s", a->source, a->destination);
	prog = progress_start(a->destination, total);
	/* a regular file: its parts are read from it as they go out */
	if (S_ISREG(st.st_mode) && total > PIPELINE_PART_SIZE
	            ? pipeline_send_file(p, fd, on_progress, prog, e)
	            : stream(p, fd, a->source, total, prog, e))
		goto out;
	if (pipeline_finish(p, &rec, e))
		goto out;
	progress_end(prog, "uploaded");
	prog = NULL;
	size_format(rec.size, size, sizeof(size));
	printf("uploaded images/%s: %s (%llu bytes), %s%s%s\n", a->destination, size,
	       (unsigned long long)rec.size, rec.checksum, rec.manifest_checksum[0] ? ", " : "",
	       rec.manifest_checksum);
	rc = 0;
out:
	if (prog)
		progress_end(prog, "failed");
	pipeline_free(p);
	record_free(&rec);
	if (fd > STDIN_FILENO)
		close(fd);
	return rc;
}

int cmd_upload(int argc, char **argv)
{
	struct common_opts common = {0};
	struct upload_args a = {0};
	struct s3_config cfg = {0};
	struct err e = {0};
	int rc = cli_parse(&upload_spec, argc, argv, &common, upload_opt, &a, &e);
	if (rc)
		return rc > 0 ? 0 : cli_fail(&e);
	if (!a.source || !a.destination) {
		err_set(&e, ERR_USAGE,
		        "images upload: --source and --destination are required "
		        "(see 'labctl images upload --help')");
		return cli_fail(&e);
	}
	if (mf_check_destination(a.destination, &e)) {
		e.code = ERR_USAGE;
		err_prefix(&e, "images upload: --destination %s", a.destination);
		return cli_fail(&e);
	}
	if (cli_s3_config(&common, &cfg, &e))
		return cli_fail(&e);
	interrupt_install();
	rc = upload_file(&a, &cfg, &e);
	if (rc && interrupted()) {
		s3_config_free(&cfg);
		log_error("upload of %s interrupted: %s; the multipart upload was aborted and "
		          "images/%s is as it was",
		          a.source, e.msg, a.destination);
		return interrupt_status();
	}
	if (!rc)
		bucket_index_refresh(&cfg, NULL);
	s3_config_free(&cfg);
	if (rc) {
		err_prefix(&e, "upload of %s failed", a.source);
		return cli_fail(&e);
	}
	return 0;
}
