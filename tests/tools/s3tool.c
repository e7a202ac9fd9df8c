/* s3tool: a tiny command line over store/s3.h, for tests and debugging.
 *
 *   s3tool put KEY FILE                 upload FILE ('-': stdin) with one PUT; prints the ETag
 *   s3tool get KEY [OFF LEN] > out      stream the object (or [OFF, OFF+LEN)) to stdout
 *   s3tool get-if KEY ETAG [OFF LEN]    the same with If-Match: ETAG
 *   s3tool get-all KEY MAX > out        the whole object in memory, if at most MAX bytes
 *   s3tool head KEY                     "SIZE ETAG MTIME"
 *   s3tool ls [PREFIX [DELIM]]          "SIZE ETAG KEY" lines, then "PRE PREFIX" lines
 *   s3tool rm KEY...                    DeleteObject (one key) / DeleteObjects ('-': keys on stdin)
 *   s3tool mpu-put KEY FILE PARTSIZE    multipart upload; prints the ETag
 *   s3tool mpu-create KEY               start a multipart upload; prints the upload id
 *   s3tool mpu-ls [PREFIX]              "KEY UPLOAD_ID INITIATED" lines
 *   s3tool mpu-abort KEY ID
 *
 * Bucket from E2_ENDPOINT, E2_BUCKET, E2_ACCESS_KEY, E2_SECRET_KEY,
 * E2_REGION, and E2_CA_BUNDLE (this tool only).  IMGSTORE_RETRY_BUDGET and
 * IMGSTORE_MAX_ATTEMPTS shorten the retries (see s3.h).  S3TOOL_STATS=1
 * prints the connection's counters on stderr.
 * Exit status: 0 ok, 1 the request failed, 2 usage (err_exit_code). */
#include "common/err.h"
#include "common/log.h"
#include "common/size.h"
#include "common/timefmt.h"
#include "store/s3/s3.h"
#include "store/secrets/credentials.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int usage(struct err *e)
{
	return err_set(e, ERR_USAGE,
	               "usage: s3tool put KEY FILE | get KEY [OFF LEN] | get-if KEY ETAG [OFF LEN] "
	               "| get-all KEY MAX | head KEY | ls [PREFIX [DELIM]] | rm KEY... "
	               "| mpu-put KEY FILE PARTSIZE | mpu-create KEY | mpu-ls [PREFIX] "
	               "| mpu-abort KEY ID");
}

/* A file's bytes: mmap'd when possible, else read (stdin). */
struct blob {
	void *data;
	size_t len;
	int mapped;
};

static int blob_load(const char *path, struct blob *b, struct err *e)
{
	int fd = strcmp(path, "-") ? open(path, O_RDONLY | O_CLOEXEC) : 0;
	struct stat st;
	size_t cap = 0;
	int rc = -1;
	memset(b, 0, sizeof(*b));
	if (fd < 0)
		return err_errno(e, "opening %s", path);
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
		b->data = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (b->data == MAP_FAILED) {
			b->data = NULL;
			err_errno(e, "mapping %s", path);
			goto out;
		}
		b->len = (size_t)st.st_size;
		b->mapped = 1;
		rc = 0;
		goto out;
	}
	for (;;) {
		ssize_t n;
		if (b->len == cap) {
			void *p = realloc(b->data, cap ? cap * 2 : 1 << 20);
			if (!p) {
				err_set(e, ERR_IO, "out of memory");
				goto out;
			}
			b->data = p;
			cap = cap ? cap * 2 : 1 << 20;
		}
		n = read(fd, (char *)b->data + b->len, cap - b->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err_errno(e, "reading %s", path);
			goto out;
		}
		if (n == 0)
			break;
		b->len += (size_t)n;
	}
	rc = 0;
out:
	if (fd > 0)
		close(fd);
	return rc;
}

static void blob_free(struct blob *b)
{
	if (b->mapped)
		munmap(b->data, b->len);
	else
		free(b->data);
}

static int to_stdout(void *ud, const void *data, size_t n)
{
	const char *p = data;
	(void)ud;
	while (n) {
		ssize_t w = write(1, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int parse_u64(const char *s, uint64_t *out, struct err *e)
{
	char *end;
	errno = 0;
	if (!*s || *s == '-')
		return err_set(e, ERR_USAGE, "'%s' is not a number", s);
	*out = strtoull(s, &end, 10);
	if (*end || errno)
		return err_set(e, ERR_USAGE, "'%s' is not a number", s);
	return 0;
}

static int cmd_get(struct s3 *s, const char *key, const char *etag, int argc, char **argv,
                   struct err *e)
{
	uint64_t off = 0, len = UINT64_MAX;
	if (argc != 0 && argc != 2)
		return usage(e);
	if (argc == 2 && (parse_u64(argv[0], &off, e) || parse_u64(argv[1], &len, e)))
		return -1;
	return s3_get(s, key, off, len, etag, to_stdout, NULL, e);
}

static int cmd_get_all(struct s3 *s, const char *key, const char *max, struct err *e)
{
	uint64_t m;
	char *data = NULL;
	size_t len = 0;
	int rc;
	if (parse_u64(max, &m, e) || s3_get_all(s, key, (size_t)m, &data, &len, NULL, e))
		return -1;
	rc = fwrite(data, 1, len, stdout) == len ? 0 : err_errno(e, "writing stdout");
	free(data);
	return rc;
}

static int cmd_mpu_put(struct s3 *s, const char *key, const char *file, const char *psize,
                       struct err *e)
{
	struct blob b;
	uint64_t part;
	struct s3_part *parts = NULL;
	char *id = NULL, etag[S3_ETAG_MAX];
	size_t n, i;
	int rc = -1;
	if (size_parse(psize, &part) || part == 0)
		return err_set(e, ERR_USAGE, "bad part size '%s'", psize);
	if (blob_load(file, &b, e))
		return -1;
	n = b.len ? (b.len + part - 1) / part : 1;
	parts = calloc(n, sizeof(*parts));
	if (!parts) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (s3_mpu_create(s, key, NULL, &id, e))
		goto out;
	for (i = 0; i < n; i++) {
		size_t off = (size_t)(i * part), len = b.len - off < part ? b.len - off : part;
		parts[i].number = (int)i + 1;
		if (s3_mpu_put_part(s, key, id, parts[i].number, (const char *)b.data + off, len,
		                    NULL, parts[i].etag, e))
			goto abort;
	}
	if (s3_mpu_complete(s, key, id, parts, n, etag, e))
		goto abort;
	printf("%s\n", etag);
	rc = 0;
	goto out;
abort : {
	struct err e2 = {0};
	if (s3_mpu_abort(s, key, id, &e2))
		fprintf(stderr, "s3tool: aborting the upload failed too: %s\n", e2.msg);
}
out:
	free(id);
	free(parts);
	blob_free(&b);
	return rc;
}

static int cmd_rm(struct s3 *s, int argc, char **argv, struct err *e)
{
	char **keys = NULL, *line = NULL;
	size_t n = 0, cap = 0, lcap = 0;
	ssize_t l;
	int rc = -1;
	if (argc < 1)
		return usage(e);
	if (argc == 1 && strcmp(argv[0], "-"))
		return s3_delete(s, argv[0], e);
	if (strcmp(argv[0], "-"))
		return s3_delete_many(s, argv, (size_t)argc, e);
	while ((l = getline(&line, &lcap, stdin)) >= 0) {
		if (l && line[l - 1] == '\n')
			line[--l] = '\0';
		if (!l)
			continue;
		if (n == cap) {
			char **p = realloc(keys, (cap = cap ? cap * 2 : 256) * sizeof(*keys));
			if (!p)
				goto oom;
			keys = p;
		}
		if (!(keys[n] = strdup(line)))
			goto oom;
		n++;
	}
	rc = n ? s3_delete_many(s, keys, n, e) : 0;
	goto out;
oom:
	err_set(e, ERR_IO, "out of memory");
out:
	while (n)
		free(keys[--n]);
	free(keys);
	free(line);
	return rc;
}

static int run(struct s3 *s, int argc, char **argv, struct err *e)
{
	const char *cmd = argv[0];
	char etag[S3_ETAG_MAX], when[32];
	if (!strcmp(cmd, "put") && argc == 3) {
		struct blob b;
		int rc;
		if (blob_load(argv[2], &b, e))
			return -1;
		rc = s3_put(s, argv[1], b.data, b.len, NULL, etag, e);
		blob_free(&b);
		if (!rc)
			printf("%s\n", etag);
		return rc;
	}
	if (!strcmp(cmd, "get") && argc >= 2)
		return cmd_get(s, argv[1], NULL, argc - 2, argv + 2, e);
	if (!strcmp(cmd, "get-if") && argc >= 3)
		return cmd_get(s, argv[1], argv[2], argc - 3, argv + 3, e);
	if (!strcmp(cmd, "get-all") && argc == 3)
		return cmd_get_all(s, argv[1], argv[2], e);
	if (!strcmp(cmd, "head") && argc == 2) {
		struct s3_object o;
		if (s3_head(s, argv[1], &o, e))
			return -1;
		time_format_rfc3339(o.mtime, when);
		printf("%" PRIu64 " %s %s\n", o.size, o.etag, when);
		return 0;
	}
	if (!strcmp(cmd, "ls") && argc <= 3) {
		struct s3_object *o;
		char **pre;
		size_t no, np, i;
		if (s3_list(s, argc > 1 ? argv[1] : "", argc > 2 ? argv[2] : NULL, &o, &no, &pre,
		            &np, e))
			return -1;
		for (i = 0; i < no; i++)
			printf("%" PRIu64 " %s %s\n", o[i].size, o[i].etag, o[i].key);
		for (i = 0; i < np; i++)
			printf("PRE %s\n", pre[i]);
		s3_objects_free(o, no);
		s3_strings_free(pre, np);
		return 0;
	}
	if (!strcmp(cmd, "rm"))
		return cmd_rm(s, argc - 1, argv + 1, e);
	if (!strcmp(cmd, "mpu-put") && argc == 4)
		return cmd_mpu_put(s, argv[1], argv[2], argv[3], e);
	if (!strcmp(cmd, "mpu-create") && argc == 2) {
		char *id;
		if (s3_mpu_create(s, argv[1], NULL, &id, e))
			return -1;
		printf("%s\n", id);
		free(id);
		return 0;
	}
	if (!strcmp(cmd, "mpu-ls") && argc <= 2) {
		struct s3_upload *u;
		size_t n, i;
		if (s3_mpu_list(s, argc > 1 ? argv[1] : "", &u, &n, e))
			return -1;
		for (i = 0; i < n; i++) {
			time_format_rfc3339(u[i].initiated, when);
			printf("%s %s %s\n", u[i].key, u[i].upload_id, when);
		}
		s3_uploads_free(u, n);
		return 0;
	}
	if (!strcmp(cmd, "mpu-abort") && argc == 3)
		return s3_mpu_abort(s, argv[1], argv[2], e);
	return usage(e);
}

int main(int argc, char **argv)
{
	struct cred_opts co = {0};
	struct s3_config cfg;
	struct s3 *s = NULL;
	struct err e = {0};
	int rc = -1;
	log_init("s3tool", LOG_LVL_WARN);
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(&e);
		fprintf(argc < 2 ? stderr : stdout, "%s\n", e.msg);
		return argc < 2 ? 2 : 0;
	}
	co.ca_bundle = getenv("E2_CA_BUNDLE");
	if (credentials_resolve(&co, &cfg, &e))
		goto out;
	s3_config_defaults(&cfg);
	if (s3_global_init(&e))
		goto out_cfg;
	s = s3_open(&cfg, &e);
	if (!s)
		goto out_cfg;
	rc = run(s, argc - 1, argv + 1, &e);
	if (getenv("S3TOOL_STATS")) {
		struct s3_stats st;
		s3_get_stats(s, &st);
		fprintf(stderr,
		        "s3tool: requests %" PRIu64 " retries %" PRIu64 " bytes_in %" PRIu64
		        " bytes_out %" PRIu64 "\n",
		        st.requests, st.retries, st.bytes_in, st.bytes_out);
	}
	s3_close(s);
out_cfg:
	s3_config_free(&cfg);
	s3_global_cleanup();
out:
	if (fflush(stdout) && !rc)
		rc = err_errno(&e, "writing stdout");
	if (rc) {
		fprintf(stderr, "s3tool: %s\n", e.msg);
		return err_exit_code(&e);
	}
	return 0;
}
