/* Unit tests for common/: size parsing, hex, hashing, time, errors. */
#include "common/err.h"
#include "common/file.h"
#include "common/hash.h"
#include "common/hex.h"
#include "common/log.h"
#include "common/size.h"
#include "common/timefmt.h"
#include "tests/unit/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_size(void)
{
	uint64_t v;
	CHECK(size_parse("10G", &v) == 0 && v == 10ULL << 30);
	CHECK(size_parse("8M", &v) == 0 && v == 8ULL << 20);
	CHECK(size_parse("4096", &v) == 0 && v == 4096);
	CHECK(size_parse("1.5K", &v) == 0 && v == 1536);
	CHECK(size_parse("2GiB", &v) == 0 && v == 2ULL << 30);
	CHECK(size_parse("1t", &v) == 0 && v == 1ULL << 40);
	CHECK(size_parse("", &v) == -1);
	CHECK(size_parse("abc", &v) == -1);
	CHECK(size_parse("-1G", &v) == -1);
	CHECK(size_parse("10X", &v) == -1);
	CHECK(size_parse("10G garbage", &v) == -1);
	CHECK(size_parse("99999999999T", &v) == -1);
	long s;
	CHECK(seconds_parse("60", 0, 86400, &s) == 0 && s == 60);
	CHECK(seconds_parse("6O", 0, 86400, &s) == -1);
	CHECK(seconds_parse("-5", 0, 86400, &s) == -1);
	CHECK(seconds_parse("", 0, 86400, &s) == -1);
}

static void test_hash(void)
{
	char hex[HASH_MAX_HEX];
	enum hash_alg alg;
	hash_sha256_hex("abc", 3, hex);
	CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	struct hash *h = hash_new(HASH_SHA512);
	hash_update(h, "ab", 2);
	hash_update(h, "c", 1);
	hash_final_hex(h, hex);
	hash_free(h);
	CHECK_STR(hex, "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
	               "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f");
	CHECK(hash_checksum_parse(
	              "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
	              &alg, hex) == 0);
	CHECK(alg == HASH_SHA256);
	CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	CHECK(hash_checksum_parse("sha256:abc", &alg, hex) == -1);
	CHECK(hash_checksum_parse("md5:ba7816bf8f01cfea414140de5dae2223", &alg, hex) == -1);
	unsigned char raw[3];
	CHECK(hex_decode("0aFf10", 3, raw) == 0 && raw[0] == 0x0a && raw[1] == 0xff &&
	      raw[2] == 0x10);
	CHECK(hex_decode("0g", 1, raw) == -1);
}

static void test_time(void)
{
	char out[32];
	time_t t;
	CHECK(time_parse_rfc3339("2024-12-20T10:00:00Z", &t) == 0);
	time_format_rfc3339(t, out);
	CHECK_STR(out, "2024-12-20T10:00:00Z");
	CHECK(time_parse_rfc3339("2024-12-20T11:00:00.123+01:00", &t) == 0);
	time_format_rfc3339(t, out);
	CHECK_STR(out, "2024-12-20T10:00:00Z");
	CHECK(time_parse_rfc3339("yesterday", &t) == -1);
}

static void test_err(void)
{
	struct err e;
	CHECK(err_set(&e, ERR_AUTH, "PUT %s: 403", "k") == -1);
	err_prefix(&e, "uploading %s", "x.qcow2");
	CHECK_STR(e.msg, "uploading x.qcow2: PUT k: 403");
	CHECK(err_exit_code(&e) == 1);
	err_set(&e, ERR_INVALID, "bad");
	CHECK(err_exit_code(&e) == 2);
}

static void test_file(void)
{
	char dir[] = "/tmp/imgstore-test-file-XXXXXX";
	char path[64];
	struct buf b = BUF_INIT;
	struct err e;
	struct stat st;
	CHECK(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/f", dir);
	CHECK(file_read_all(path, 100, &b, &e) == -1 && e.code == ERR_NOTFOUND);
	CHECK(file_write_atomic(path, "hello", 5, 0640, &e) == 0);
	CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0640);
	CHECK(file_read_all(path, 100, &b, &e) == 0 && b.len == 5);
	CHECK_STR(b.data, "hello");
	buf_reset(&b);
	CHECK(file_read_all(path, 4, &b, &e) == -1 && e.code == ERR_INVALID);
	buf_reset(&b);
	/* replacing keeps the existing mode, not the one asked for new files */
	CHECK(chmod(path, 0600) == 0);
	CHECK(file_write_atomic(path, "bye", 3, 0644, &e) == 0);
	CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600);
	CHECK(file_read_all(path, 100, &b, &e) == 0);
	CHECK_STR(b.data, "bye");
	buf_free(&b);
	unlink(path);
	rmdir(dir);
}

/* a key from the bucket with a newline must not forge a second log line */
static void test_log_controls(void)
{
	char out[256] = "";
	FILE *tmp = tmpfile();
	int saved = dup(2);
	CHECK(tmp && saved >= 0);
	if (!tmp || saved < 0)
		return;
	unsetenv("JOURNAL_STREAM");
	unsetenv("IMGSTORE_LOG");
	log_init("t", LOG_LVL_INFO);
	fflush(stderr);
	dup2(fileno(tmp), 2);
	log_info("%s: gone", "a\n<3>t: error: forged\x1b[2J\x7f");
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	rewind(tmp);
	size_t n = fread(out, 1, sizeof(out) - 1, tmp);
	out[n] = '\0';
	CHECK_STR(out, "t: a?<3>t: error: forged?[2J?: gone\n");
	fclose(tmp);
}

int main(void)
{
	test_log_controls();
	test_file();
	test_size();
	test_hash();
	test_time();
	test_err();
	return check_report("common");
}
