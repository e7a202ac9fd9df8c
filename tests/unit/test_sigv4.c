/* SigV4: the four worked examples of the S3 documentation
 * (tests/data/sigv4/vectors.json), byte for byte, plus the
 * encoding and query rules the signer applies before them. */
#include "check.h"
#include "common/buf.h"
#include "store/s3/sigv4.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *jstr(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static void test_vector(json_t *root, json_t *v)
{
	const char *name = jstr(v, "name"), *amz_date = jstr(root, "amz_date");
	const char *region = jstr(root, "region"), *service = jstr(root, "service");
	json_t *hs = json_object_get(v, "headers");
	size_t nh = json_array_size(hs), i;
	struct sigv4_header *h = calloc(nh, sizeof(*h));
	struct buf creq = BUF_INIT, sh = BUF_INIT, sts = BUF_INIT, auth = BUF_INIT;
	unsigned char key[32];
	char sig[65];
	CHECK(h != NULL);
	if (!h)
		return;
	/* feed the headers in reverse with upper case names: the signer sorts
	 * and lower-cases */
	for (i = 0; i < nh; i++) {
		json_t *pair = json_array_get(hs, nh - 1 - i);
		h[i].name = json_string_value(json_array_get(pair, 0));
		h[i].value = json_string_value(json_array_get(pair, 1));
	}
	CHECK(sigv4_canonical_request(jstr(v, "method"), jstr(v, "canonical_uri"),
	                              jstr(v, "canonical_query"), h, nh, jstr(v, "payload_sha256"),
	                              &creq, &sh) == 0);
	if (strcmp(creq.data, jstr(v, "canonical_request")))
		fprintf(stderr, "%s: canonical request differs\n", name);
	CHECK_STR(creq.data, jstr(v, "canonical_request"));
	CHECK_STR(sh.data, jstr(v, "signed_headers"));
	CHECK(sigv4_string_to_sign(amz_date, region, service, creq.data, creq.len, &sts) == 0);
	CHECK_STR(sts.data, jstr(v, "string_to_sign"));
	CHECK(sigv4_signing_key(jstr(root, "secret_key"), amz_date, region, service, key) == 0);
	CHECK(sigv4_signature(key, sts.data, sts.len, sig) == 0);
	CHECK_STR(sig, jstr(v, "signature"));
	CHECK(sigv4_authorization(jstr(root, "access_key"), amz_date, region, service, sh.data, sig,
	                          &auth) == 0);
	CHECK(strstr(auth.data, "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
	                        "aws4_request, SignedHeaders=") == auth.data + 17);
	CHECK(strstr(auth.data, jstr(v, "signature")) != NULL);
	buf_free(&creq);
	buf_free(&sh);
	buf_free(&sts);
	buf_free(&auth);
	free(h);
}

static void test_vectors(void)
{
	const char *dir = getenv("TEST_DATA");
	char path[4096];
	json_error_t jerr;
	json_t *root, *vs;
	size_t i;
	snprintf(path, sizeof(path), "%s/sigv4/vectors.json", dir ? dir : "tests/data");
	root = json_load_file(path, 0, &jerr);
	CHECK(root != NULL);
	if (!root) {
		fprintf(stderr, "%s: %s\n", path, jerr.text);
		return;
	}
	vs = json_object_get(root, "vectors");
	CHECK(json_array_size(vs) == 4);
	for (i = 0; i < json_array_size(vs); i++)
		test_vector(root, json_array_get(vs, i));
	json_decref(root);
}

/* the raw inputs of the vectors go through the same encoders */
static void test_encoding(void)
{
	struct buf b = BUF_INIT, c = BUF_INIT, u = BUF_INIT;
	const char *key = "/test$file.text";
	sigv4_uri_encode(&b, key, strlen(key), 1);
	CHECK_STR(b.data, "/test%24file.text");
	buf_reset(&b);
	key = "dir/a b+c=d~_-.é";
	sigv4_uri_encode(&b, key, strlen(key), 1);
	CHECK_STR(b.data, "dir/a%20b%2Bc%3Dd~_-.%C3%A9");
	buf_reset(&b);
	sigv4_uri_encode(&b, "a/b", 3, 0);
	CHECK_STR(b.data, "a%2Fb");

	{
		struct sigv4_param p[] = {{"prefix", "J"}, {"max-keys", "2"}};
		CHECK(sigv4_query(p, 2, &c, &u) == 0);
		CHECK_STR(c.data, "max-keys=2&prefix=J");
		CHECK_STR(u.data, "max-keys=2&prefix=J");
	}
	buf_reset(&c);
	buf_reset(&u);
	{
		struct sigv4_param p[] = {{"lifecycle", NULL}};
		CHECK(sigv4_query(p, 1, &c, &u) == 0);
		CHECK_STR(c.data, "lifecycle=");
		CHECK_STR(u.data, "lifecycle");
	}
	buf_reset(&c);
	buf_reset(&u);
	{
		/* a continuation token with + / =, a valueless sub-resource */
		struct sigv4_param p[] = {{"list-type", "2"},
		                          {"continuation-token", "1a+b/c=="},
		                          {"uploads", NULL},
		                          {"prefix", "a b"}};
		CHECK(sigv4_query(p, 4, &c, &u) == 0);
		CHECK_STR(c.data, "continuation-token=1a%2Bb%2Fc%3D%3D&list-type=2&prefix=a%20b&"
		                  "uploads=");
		CHECK_STR(u.data, "continuation-token=1a%2Bb%2Fc%3D%3D&list-type=2&prefix=a%20b&"
		                  "uploads");
	}
	buf_reset(&c);
	CHECK(sigv4_query(NULL, 0, &c, NULL) == 0);
	CHECK_STR(c.data, "");
	buf_free(&b);
	buf_free(&c);
	buf_free(&u);
}

static void test_header_values(void)
{
	struct sigv4_header h[] = {{"X-Amz-Meta-A", "  two   spaces\there  "}, {"Host", "h"}};
	struct buf b = BUF_INIT;
	CHECK(sigv4_canonical_request("GET", "/", "", h, 2, SIGV4_EMPTY_SHA256, &b, NULL) == 0);
	CHECK_STR(b.data, "GET\n/\n\nhost:h\nx-amz-meta-a:two spaces "
	                  "here\n\nhost;x-amz-meta-a\n" SIGV4_EMPTY_SHA256);
	buf_free(&b);
}

static void test_amz_date(void)
{
	char d[17];
	sigv4_amz_date(1369353600LL, d); /* 2013-05-24T00:00:00Z */
	CHECK_STR(d, "20130524T000000Z");
}

int main(void)
{
	test_vectors();
	test_encoding();
	test_header_values();
	test_amz_date();
	return check_report("sigv4");
}
