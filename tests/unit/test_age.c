/* age (X25519) on OpenSSL: our own encoder/decoder, the SOPS test identities,
 * and interoperability with the Debian `age` CLI in both directions. */
#include "check.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/file.h"
#include "store/secrets/age.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];
static int have_age_cli;

/* the product's own file helpers; a test failure shows as a CHECK */
static int read_file(const char *path, struct buf *b)
{
	struct err e = {0};
	return file_read_all(path, SIZE_MAX, b, &e);
}

static int write_file(const char *path, const void *data, size_t n)
{
	struct err e = {0};
	return file_write_atomic(path, data, n, 0600, &e);
}

static int run(const char *fmt, const char *a, const char *b, const char *c)
{
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), fmt, a, b, c);
	return system(cmd);
}

/* The "# public key: age1..." comment of an identity file. */
static int public_key_comment(const char *path, char *out, size_t cap)
{
	struct buf b = BUF_INIT;
	const char *p;
	int rc = -1;
	if (read_file(path, &b))
		return -1;
	p = strstr(b.data, "# public key: ");
	if (p) {
		size_t n = strcspn(p + 14, "\r\n");
		snprintf(out, cap, "%.*s", (int)n, p + 14);
		rc = 0;
	}
	buf_free(&b);
	return rc;
}

static void test_base64(void)
{
	unsigned char out[64];
	size_t n;
	struct buf b = BUF_INIT;
	CHECK(age_b64_decode("aGVsbG8=", 8, 1, out, &n) == 0 && n == 5 && !memcmp(out, "hello", 5));
	CHECK(age_b64_decode("aGVsbG8", 7, 0, out, &n) == 0 && n == 5);
	CHECK(age_b64_decode("aGVsbG8", 7, 1, out, &n) == -1);   /* padding required */
	CHECK(age_b64_decode("aGVsbG8=", 8, 0, out, &n) == -1);  /* no padding allowed */
	CHECK(age_b64_decode("aGVsbG9=", 8, 1, out, &n) == -1);  /* non-canonical bits */
	CHECK(age_b64_decode("aGVs bG8=", 9, 1, out, &n) == -1); /* stray char */
	CHECK(age_b64_decode("", 0, 1, out, &n) == 0 && n == 0);
	CHECK(age_b64_encode((const unsigned char *)"hello", 5, 1, &b) == 0);
	CHECK_STR(b.data, "aGVsbG8=");
	buf_reset(&b);
	CHECK(age_b64_encode((const unsigned char *)"hello", 5, 0, &b) == 0);
	CHECK_STR(b.data, "aGVsbG8");
	buf_free(&b);
}

static void test_identities(void)
{
	static const char *const files[] = {"helm-secrets/key.txt", "sops-nix/age-keys.txt",
	                                    "kustomize-controller/age.txt"};
	const char *data = getenv("TEST_DATA");
	char path[1024], want[128], got[AGE_RECIPIENT_MAX];
	unsigned char pub[32];
	size_t i;
	struct err e;
	for (i = 0; i < 3; i++) {
		struct age_identities ids = {0};
		snprintf(path, sizeof(path), "%s/sops/%s", data, files[i]);
		CHECK(public_key_comment(path, want, sizeof(want)) == 0);
		CHECK(age_identities_load(&ids, path, &e) == 0);
		CHECK(ids.n == 1);
		if (ids.n == 1) {
			age_recipient_format(ids.v[0].pub, got);
			CHECK_STR(got, want);
			CHECK(age_recipient_parse(want, pub, &e) == 0 &&
			      !memcmp(pub, ids.v[0].pub, 32));
		}
		age_identities_free(&ids);
	}
	/* Bad inputs: never echo the line, name the line number. */
	{
		struct age_identities ids = {0};
		const char *bad =
		        "# comment\n\nAGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
		        "QQQQQQQQQQQQQQQQQQQ\n";
		CHECK(age_identities_parse(&ids, bad, strlen(bad), "k.txt", &e) == -1);
		CHECK(e.code == ERR_INVALID && strstr(e.msg, "k.txt, line 3") &&
		      !strstr(e.msg, "QQQQ"));
		CHECK(age_identities_parse(&ids, "hello\n", 6, "k.txt", &e) == -1);
		CHECK(strstr(e.msg, "line 1") && !strstr(e.msg, "hello"));
		CHECK(age_identities_parse(&ids, "# only\n", 7, "k.txt", &e) == -1);
		CHECK(ids.n == 0);
		age_identities_free(&ids);
	}
	CHECK(age_recipient_parse("age1notarecipient", pub, &e) == -1 && e.code == ERR_USAGE);
	CHECK(age_recipient_parse(
	              "AGE-SECRET-KEY-1E9XAHYWZHY026MSX7FVX98XTXWJS4UC38QG603X9JDM2SPRJ8"
	              "HZSVGG0LT",
	              pub, &e) == -1);
	/* Mixed case is invalid Bech32. */
	CHECK(age_recipient_parse("age1rh2xsjg8avja92j3jhtttuczgmqkz89lezxt4e3mmp5ukl5j4f9smvteJu",
	                          pub, &e) == -1);
	CHECK(age_recipient_parse("age1rh2xsjg8avja92j3jhtttuczgmqkz89lezxt4e3mmp5ukl5j4f9smvteju",
	                          pub, &e) == 0);
	/* One changed character breaks the checksum. */
	CHECK(age_recipient_parse("age1rh2xsjg8avja92j3jhtttuczgmqkz89lezxt4e3mmp5ukl5j4f9smvtejv",
	                          pub, &e) == -1);
}

static void roundtrip_self(size_t n)
{
	char idtext[AGE_IDENTITY_MAX + 2], rcpt[AGE_RECIPIENT_MAX];
	const char *r = rcpt;
	struct age_identities ids = {0};
	struct buf ct = BUF_INIT, pt = BUF_INIT;
	unsigned char *data = malloc(n ? n : 1);
	struct err e;
	int armor;
	RAND_bytes(data, (int)(n ? n : 1));
	CHECK(age_keygen(idtext, rcpt, &e) == 0);
	CHECK(age_identities_parse(&ids, idtext, strlen(idtext), "generated", &e) == 0);
	for (armor = 0; armor < 2; armor++) {
		buf_reset(&ct);
		buf_reset(&pt);
		CHECK(age_encrypt(&r, 1, data, n, armor, &ct, &e) == 0);
		CHECK(age_decrypt(&ids, ct.data, ct.len, &pt, &e) == 0);
		CHECK(pt.len == n && (n == 0 || !memcmp(pt.data, data, n)));
	}
	OPENSSL_cleanse(idtext, sizeof(idtext));
	age_identities_free(&ids);
	buf_free(&ct);
	buf_free_secure(&pt);
	free(data);
}

static void test_tamper(void)
{
	char idtext[AGE_IDENTITY_MAX], rcpt[AGE_RECIPIENT_MAX], other_id[AGE_IDENTITY_MAX],
	        other_r[AGE_RECIPIENT_MAX];
	const char *r = rcpt;
	struct age_identities ids = {0}, wrong = {0};
	struct buf ct = BUF_INIT, pt = BUF_INIT, bad = BUF_INIT;
	unsigned char data[70000];
	char *hdr_end;
	struct err e;
	RAND_bytes(data, sizeof(data));
	CHECK(age_keygen(idtext, rcpt, &e) == 0 && age_keygen(other_id, other_r, &e) == 0);
	CHECK(age_identities_parse(&ids, idtext, strlen(idtext), "id", &e) == 0);
	CHECK(age_identities_parse(&wrong, other_id, strlen(other_id), "wrong", &e) == 0);
	CHECK(age_encrypt(&r, 1, data, sizeof(data), 0, &ct, &e) == 0);

	/* Wrong identity: ERR_AUTH. */
	CHECK(age_decrypt(&wrong, ct.data, ct.len, &pt, &e) == -1 && e.code == ERR_AUTH);
	CHECK(strstr(e.msg, "no age identity matches") != NULL);

	/* A flipped bit in the header MAC. */
	hdr_end = strstr(ct.data, "\n--- ");
	CHECK(hdr_end != NULL);
	if (hdr_end) {
		buf_append(&bad, ct.data, ct.len);
		bad.data[hdr_end - ct.data + 6] ^= 0x01;
		buf_reset(&pt);
		CHECK(age_decrypt(&ids, bad.data, bad.len, &pt, &e) == -1 && e.code == ERR_INVALID);
		buf_free(&bad);
	}
	/* A flipped byte in each payload chunk, and in the nonce. */
	{
		size_t off[] = {ct.len - 1, ct.len - 5000, ct.len - 70000 + 10};
		size_t i;
		for (i = 0; i < 3; i++) {
			buf_append(&bad, ct.data, ct.len);
			bad.data[off[i]] ^= 0x40;
			buf_reset(&pt);
			CHECK(age_decrypt(&ids, bad.data, bad.len, &pt, &e) == -1 &&
			      e.code == ERR_INVALID);
			buf_free(&bad);
		}
	}
	/* Truncated: drop the final chunk, or a byte, or the whole payload. */
	{
		size_t cut[] = {ct.len - (70000 - 65536) - 16, ct.len - 1,
		                (size_t)(strstr(ct.data, "\n--- ") - ct.data) + 49};
		size_t i;
		for (i = 0; i < 3; i++) {
			buf_reset(&pt);
			CHECK(age_decrypt(&ids, ct.data, cut[i], &pt, &e) == -1);
		}
	}
	/* Trailing garbage after the final chunk. */
	buf_append(&bad, ct.data, ct.len);
	buf_append(&bad, "x", 1);
	buf_reset(&pt);
	CHECK(age_decrypt(&ids, bad.data, bad.len, &pt, &e) == -1);
	buf_free(&bad);

	/* A low-order X25519 share must be rejected, not treated as "no match". */
	{
		const char *h = "age-encryption.org/v1\n"
		                "-> X25519 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
		                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
		                "--- AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
		                "0123456789abcdef0123456789abcdef";
		buf_reset(&pt);
		CHECK(age_decrypt(&ids, h, strlen(h), &pt, &e) == -1 && e.code == ERR_INVALID);
	}
	/* scrypt stanzas are refused clearly. */
	{
		const char *h = "age-encryption.org/v1\n"
		                "-> scrypt AAAAAAAAAAAAAAAAAAAAAA 18\n"
		                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
		                "--- AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n";
		buf_reset(&pt);
		CHECK(age_decrypt(&ids, h, strlen(h), &pt, &e) == -1 && strstr(e.msg, "scrypt"));
	}
	/* Not age at all. */
	buf_reset(&pt);
	CHECK(age_decrypt(&ids, "hello\n", 6, &pt, &e) == -1 && e.code == ERR_INVALID);

	/* Armor: a changed character in the base64 body, and a non-64 column line. */
	buf_reset(&ct);
	CHECK(age_encrypt(&r, 1, "key", 3, 1, &ct, &e) == 0);
	{
		char *line2 = strchr(ct.data, '\n') + 1;
		buf_append(&bad, ct.data, ct.len);
		bad.data[line2 - ct.data + 70] ^= 0x01;
		buf_reset(&pt);
		CHECK(age_decrypt(&ids, bad.data, bad.len, &pt, &e) == -1);
		buf_free(&bad);
		/* Whitespace around the block is fine. */
		buf_appends(&bad, "\n  \n");
		buf_append(&bad, ct.data, ct.len);
		buf_appends(&bad, "\n\n");
		buf_reset(&pt);
		CHECK(age_decrypt(&ids, bad.data, bad.len, &pt, &e) == 0 && pt.len == 3);
		buf_free(&bad);
		/* A short line in the middle is not strict PEM. */
		buf_append(&bad, ct.data, (size_t)(line2 - ct.data) + 10);
		buf_appends(&bad, "\n");
		buf_append(&bad, line2 + 10, ct.len - (size_t)(line2 - ct.data) - 10);
		buf_reset(&pt);
		CHECK(age_decrypt(&ids, bad.data, bad.len, &pt, &e) == -1);
		buf_free(&bad);
	}
	OPENSSL_cleanse(idtext, sizeof(idtext));
	OPENSSL_cleanse(other_id, sizeof(other_id));
	age_identities_free(&ids);
	age_identities_free(&wrong);
	buf_free(&ct);
	buf_free_secure(&pt);
}

/* Files made by `age`, decrypted by us; files made by us, decrypted by `age`. */
static void test_cli_interop(void)
{
	static const size_t sizes[] = {0, 1, 32, 65535, 65536, 65537, 200000};
	char key[512], key2[512], pub[128], pub2[128], in[512], enc[512], dec[512];
	struct age_identities ids = {0}, ids2 = {0};
	struct err e;
	size_t i;
	int armor;
	snprintf(key, sizeof(key), "%s/cli-key.txt", tmpdir);
	snprintf(key2, sizeof(key2), "%s/cli-key2.txt", tmpdir);
	snprintf(in, sizeof(in), "%s/plain", tmpdir);
	snprintf(enc, sizeof(enc), "%s/enc.age", tmpdir);
	snprintf(dec, sizeof(dec), "%s/dec", tmpdir);
	CHECK(run("age-keygen -o '%s' 2>/dev/null%s%s", key, "", "") == 0);
	CHECK(run("age-keygen -o '%s' 2>/dev/null%s%s", key2, "", "") == 0);
	CHECK(public_key_comment(key, pub, sizeof(pub)) == 0);
	CHECK(public_key_comment(key2, pub2, sizeof(pub2)) == 0);
	CHECK(age_identities_load(&ids, key, &e) == 0);
	CHECK(age_identities_load(&ids2, key2, &e) == 0);
	for (i = 0; i < sizeof(sizes) / sizeof(*sizes); i++) {
		unsigned char *data = malloc(sizes[i] + 1);
		RAND_bytes(data, (int)sizes[i] + 1);
		CHECK(write_file(in, data, sizes[i]) == 0);
		for (armor = 0; armor < 2; armor++) {
			struct buf ct = BUF_INIT, pt = BUF_INIT, back = BUF_INIT;
			const char *rs[2] = {pub, pub2};
			char cmd[2048];
			/* age CLI -> us */
			snprintf(cmd, sizeof(cmd), "age %s -r %s -o '%s' '%s'", armor ? "-a" : "",
			         pub, enc, in);
			CHECK(system(cmd) == 0);
			CHECK(read_file(enc, &ct) == 0);
			CHECK(age_decrypt(&ids, ct.data, ct.len, &pt, &e) == 0);
			CHECK(pt.len == sizes[i] &&
			      (!sizes[i] || !memcmp(pt.data, data, sizes[i])));
			/* us (two recipients) -> age CLI, with either identity */
			buf_reset(&ct);
			CHECK(age_encrypt(rs, 2, data, sizes[i], armor, &ct, &e) == 0);
			CHECK(write_file(enc, ct.data, ct.len) == 0);
			CHECK(write_file(dec, "", 0) == 0); /* age creates -o lazily */
			CHECK(run("age -d -i '%s' -o '%s' '%s'", key2, dec, enc) == 0);
			CHECK(read_file(dec, &back) == 0);
			CHECK(back.len == sizes[i] &&
			      (!sizes[i] || !memcmp(back.data, data, sizes[i])));
			buf_free(&back);
			CHECK(write_file(dec, "", 0) == 0);
			CHECK(run("age -d -i '%s' -o '%s' '%s'", key, dec, enc) == 0);
			CHECK(read_file(dec, &back) == 0);
			CHECK(back.len == sizes[i] &&
			      (!sizes[i] || !memcmp(back.data, data, sizes[i])));
			buf_free(&back);
			buf_free(&ct);
			buf_free_secure(&pt);
		}
		free(data);
	}
	/* Our age_keygen output is a valid identity for the CLI. */
	{
		char id[AGE_IDENTITY_MAX], r[AGE_RECIPIENT_MAX], idfile[512], cmd[1200];
		struct buf out = BUF_INIT;
		snprintf(idfile, sizeof(idfile), "%s/our-id.txt", tmpdir);
		CHECK(age_keygen(id, r, &e) == 0);
		CHECK(write_file(idfile, id, strlen(id)) == 0 && write_file(in, "ours", 4) == 0);
		snprintf(cmd, sizeof(cmd), "age-keygen -y '%s' > '%s'", idfile, dec);
		CHECK(system(cmd) == 0);
		CHECK(read_file(dec, &out) == 0);
		CHECK(out.len > 0 && !strncmp(out.data, r, strlen(r)));
		OPENSSL_cleanse(id, sizeof(id));
		buf_free(&out);
	}
	age_identities_free(&ids);
	age_identities_free(&ids2);
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	snprintf(tmpdir, sizeof(tmpdir), "%s/test_age.XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	have_age_cli = system("age --version >/dev/null 2>&1") == 0 &&
	               system("age-keygen --version >/dev/null 2>&1") == 0;
	test_base64();
	test_identities();
	roundtrip_self(0);
	roundtrip_self(1);
	roundtrip_self(32);
	roundtrip_self(65536);
	roundtrip_self(65536 * 2 + 7);
	test_tamper();
	if (have_age_cli)
		test_cli_interop();
	else
		printf("age: SKIPPED interop with the age CLI: `age`/`age-keygen` not installed\n");
	run("rm -rf '%s'%s%s", tmpdir, "", "");
	return check_report("age");
}
