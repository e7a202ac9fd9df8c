/* SOPS: every vector in tests/data/sops decrypts to exactly the expected
 * leaves (walk order, AAD, type, plaintext) with the data key from
 * expected.json, every MAC verifies, tampering is refused; the age vectors
 * open with their identity files, the PGP vectors through gpg (temporary
 * GNUPGHOME); our encryptor's output opens with our decryptor, the `age` CLI
 * and gpg; credentials_resolve precedence and messages. */
#include "check.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/file.h"
#include "common/hex.h"
#include "store/secrets/age.h"
#include "store/secrets/credentials.h"
#include "store/secrets/sops.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char sops_dir[1024];
static char tmpdir[256];
static int have_gpg, have_age_cli;
static json_t *expected;

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

static void vec_path(char *out, size_t cap, const char *rel)
{
	snprintf(out, cap, "%s/%s", sops_dir, rel);
}

static json_t *expected_entry(const char *file)
{
	size_t i;
	json_t *v;
	json_array_foreach(expected, i, v)
	{
		if (!strcmp(json_string_value(json_object_get(v, "file")), file))
			return v;
	}
	return NULL;
}

static void data_key_of(json_t *ent, unsigned char key[32])
{
	CHECK(hex_decode(json_string_value(json_object_get(ent, "data_key_hex")), 32, key) == 0);
}

/* Compare a decrypted tree with an expected.json entry, leaf by leaf. */
static void compare_tree(const char *file, json_t *ent, const struct sops_tree *t)
{
	json_t *leaves = json_object_get(ent, "leaves"),
	       *cm = json_object_get(ent, "encrypted_comments");
	size_t i;
	json_t *l;
	CHECK(t->n == json_array_size(leaves));
	if (t->n != json_array_size(leaves))
		fprintf(stderr, "%s: %zu leaves, want %zu\n", file, t->n, json_array_size(leaves));
	json_array_foreach(leaves, i, l)
	{
		const struct sops_leaf *g = i < t->n ? &t->leaves[i] : NULL;
		const char *want_pt = json_string_value(json_object_get(l, "plaintext"));
		int want_enc = json_is_true(json_object_get(l, "encrypted"));
		json_t *ty = json_object_get(l, "type");
		if (!g)
			break;
		CHECK_STR(g->aad, json_string_value(json_object_get(l, "aad")));
		CHECK(g->encrypted == want_enc);
		CHECK_STR(g->type, ty ? json_string_value(ty) : "");
		CHECK(g->value_len == strlen(want_pt) && !memcmp(g->value, want_pt, g->value_len));
		if (g->value_len != strlen(want_pt) || memcmp(g->value, want_pt, g->value_len))
			fprintf(stderr, "%s: leaf %zu (%s) differs\n", file, i, g->aad);
	}
	CHECK_STR(t->mac, json_string_value(json_object_get(ent, "computed_mac")));
	CHECK(t->ncomments == (cm ? json_array_size(cm) : 0));
	if (t->ncomments != (cm ? json_array_size(cm) : 0))
		fprintf(stderr, "%s: %zu comments, want %zu\n", file, t->ncomments,
		        cm ? json_array_size(cm) : 0);
	json_array_foreach(cm, i, l)
	{
		if (i >= t->ncomments)
			break;
		CHECK_STR(t->comments[i].aad, json_string_value(json_object_get(l, "aad")));
		CHECK_STR(t->comments[i].value, json_string_value(json_object_get(l, "plaintext")));
	}
}

static int is_yaml_or_json(const char *file)
{
	size_t n = strlen(file);
	return (n > 5 && !strcmp(file + n - 5, ".yaml")) ||
	       (n > 5 && !strcmp(file + n - 5, ".json")) ||
	       (n > 4 && !strcmp(file + n - 4, ".txt"));
}

/* Every YAML/JSON vector, with the data key from expected.json. */
static void test_vectors_with_data_key(void)
{
	size_t i, done = 0, skipped = 0;
	json_t *ent;
	json_array_foreach(expected, i, ent)
	{
		const char *file = json_string_value(json_object_get(ent, "file"));
		char path[1200];
		struct sops_file *f = NULL;
		struct sops_tree t;
		unsigned char key[32];
		struct err e;
		int rc;
		if (!is_yaml_or_json(file)) {
			skipped++;
			continue;
		}
		vec_path(path, sizeof(path), file);
		data_key_of(ent, key);
		CHECK(sops_load(path, &f, &e) == 0);
		if (!f) {
			fprintf(stderr, "%s: %s\n", file, e.msg);
			continue;
		}
		rc = sops_decrypt(f, key, SOPS_COMMENTS, &t, &e);
		if (json_is_true(json_object_get(ent, "mac_matches"))) {
			CHECK(rc == 0);
			if (rc)
				fprintf(stderr, "%s: %s\n", file, e.msg);
			else
				compare_tree(file, ent, &t);
		} else {
			/* no_mac.yaml: refused, and the message says why. */
			CHECK(rc == -1 && e.code == ERR_INVALID && strstr(e.msg, "no MAC"));
		}
		/* Without comments the leaves are the same. */
		if (rc == 0) {
			sops_tree_free(&t);
			CHECK(sops_decrypt(f, key, 0, &t, &e) == 0 && t.ncomments == 0);
		}
		sops_tree_free(&t);
		sops_file_free(f);
		done++;
	}
	printf("sops: %zu YAML/JSON vectors decrypted with their data keys; %zu INI/dotenv "
	       "vectors not applicable (imgstore reads YAML/JSON only)\n",
	       done, skipped);
	CHECK(done >= 13);
}

/* Replace the first occurrence of `needle` (after `after`, if given) with
 * `repl` in a copy of a vector, and expect decryption to fail. */
static void expect_refused(const char *file, const char *after, const char *needle,
                           const char *repl, const char *why)
{
	char path[1200];
	struct buf b = BUF_INIT, out = BUF_INIT;
	struct sops_file *f = NULL;
	struct sops_tree t;
	unsigned char key[32];
	struct err e;
	char *start, *p;
	vec_path(path, sizeof(path), file);
	CHECK(read_file(path, &b) == 0);
	data_key_of(expected_entry(file), key);
	start = after ? strstr(b.data, after) : b.data;
	p = start ? strstr(start, needle) : NULL;
	CHECK(p != NULL);
	if (!p) {
		fprintf(stderr, "%s: cannot find %s\n", file, needle);
		buf_free(&b);
		return;
	}
	buf_append(&out, b.data, (size_t)(p - b.data));
	buf_appends(&out, repl);
	buf_appends(&out, p + strlen(needle));
	if (sops_parse(out.data, out.len, file, &f, &e) == 0) {
		int rc = sops_decrypt(f, key, 0, &t, &e);
		CHECK(rc == -1 && e.code == ERR_INVALID);
		if (rc == 0) {
			fprintf(stderr, "%s: not refused after %s\n", file, why);
			sops_tree_free(&t);
		}
		/* Never a decrypted value in the message. */
		CHECK(!strstr(e.msg, "t00m4nys3cr3tz") && !strstr(e.msg, "c4r1b0u"));
		sops_file_free(f);
	}
	buf_free(&b);
	buf_free(&out);
}

static void test_tampering(void)
{
	/* example.yaml: one flipped character in a value, an IV, a tag, the MAC */
	expect_refused("getsops-sops/example.yaml", "myapp1:", "data:zlGNm", "data:zlGNn", "data");
	expect_refused("getsops-sops/example.yaml", "user:", "iv:o9Mi", "iv:o9Mj", "iv");
	expect_refused("getsops-sops/example.yaml", "password:", "tag:WKj0", "tag:WKj1", "tag");
	expect_refused("getsops-sops/example.yaml", "mac:", "data:GCWO", "data:GCWP", "mac data");
	expect_refused("getsops-sops/example.yaml", "mac:", "iv:V1kH", "iv:V1kI", "mac iv");
	/* a value in the clear (covered by the MAC only) */
	expect_refused("getsops-sops/example.yaml", NULL, "remain in clear text",
	               "remain in clear texT", "plain value");
	/* lastmodified is the MAC's AAD */
	expect_refused("getsops-sops/example.yaml", NULL, "2025-08-06T18:55:05Z",
	               "2025-08-06T18:55:06Z", "lastmodified");
	/* a type change to one the plaintext is not valid for ("92" as bool) or
	 * to an unknown type (int -> str would hash the same bytes: sops accepts
	 * that too, since neither GCM nor the MAC covers the type) */
	expect_refused("helm-secrets/secrets.age.yaml", "port:", "type:int", "type:bool", "type");
	expect_refused("helm-secrets/secrets.age.yaml", "port:", "type:int", "type:xyz", "type");
	/* moving a value to another key breaks its AAD */
	expect_refused("sops-nix/secrets.yaml", NULL, "test_key:", "test_kez:", "key renamed");
	/* removing the MAC, emptying it */
	expect_refused("sops-nix/secrets.yaml", NULL, "    mac: ENC[", "    xmac: ENC[", "no mac");
	/* a plain value where an encrypted one must be */
	expect_refused(
	        "kustomize-controller/age.yaml", NULL,
	        "key: ENC[AES256_GCM,data:mHeXsmQ=,iv:vUMpILz3xchORqkzDFvgwENY7EqIHHGJdEF6C8xq"
	        "bFE=,tag:IroV7hykADvD0IUaq6kikA==,type:str]",
	        "key: value", "value in the clear");
	/* changing a plain field the regex leaves alone */
	expect_refused("kustomize-controller/age.yaml", NULL, "kind: Secret", "kind: Secreu",
	               "plain kind");
	/* a tag truncated to invalid base64 length */
	expect_refused("getsops-sops/example.yaml", "myapp1:", "tag:SqVSfu/JkRrwqidAT/i0pg==",
	               "tag:SqVSfu/JkRrwqidAT/i0pg=", "tag length");
}

static void test_bad_files(void)
{
	static const struct {
		const char *yaml, *want;
	} cases[] = {
	        {"a: 1\n", "no `sops` metadata"},
	        {"a: [1\n", "invalid YAML"},
	        {"- a\n- b\n", "top level is not a map"},
	        {"a: x\nsops:\n  lastmodified: '2020-01-01T00:00:00Z'\n  key_groups: [{}, {}]\n",
	         "Shamir"},
	        {"a: x\nsops:\n  lastmodified: '2020-01-01T00:00:00Z'\n  encrypted_regex: x\n"
	         "  unencrypted_suffix: _u\n",
	         "more than one"},
	        {"a: x\nsops:\n  lastmodified: '2020-01-01T00:00:00Z'\n  "
	         "unencrypted_comment_regex: "
	         "x\n",
	         "not supported"},
	        {"a: x\nsops:\n  mac: x\n", "lastmodified is missing"},
	        {"a: x\nsops:\n  lastmodified: '2020-01-01T00:00:00Z'\n  encrypted_regex: '('\n",
	         "invalid regular expression"},
	};
	size_t i;
	for (i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		struct sops_file *f = NULL;
		struct err e;
		CHECK(sops_parse(cases[i].yaml, strlen(cases[i].yaml), "bad.yaml", &f, &e) == -1);
		CHECK(e.code == ERR_INVALID && strstr(e.msg, cases[i].want) &&
		      !strncmp(e.msg, "bad.yaml", 8));
		if (!strstr(e.msg, cases[i].want))
			fprintf(stderr, "case %zu: %s\n", i, e.msg);
		sops_file_free(f);
	}
	/* A file with only KMS keys cannot be opened, and says why. */
	{
		const char *y = "a: x\nsops:\n  kms:\n  - arn: x\n    enc: y\n  lastmodified: "
		                "'2020-01-01T00:00:00Z'\n  mac: x\n";
		struct sops_file *f = NULL;
		unsigned char key[32];
		struct err e;
		CHECK(sops_parse(y, strlen(y), "kms.yaml", &f, &e) == 0);
		if (f) {
			CHECK(sops_data_key(f, NULL, key, NULL, 0, &e) == -1 &&
			      strstr(e.msg, "kms"));
			sops_file_free(f);
		}
	}
	/* A missing file. */
	{
		struct sops_tree t;
		struct err e;
		CHECK(sops_decrypt_file("/nonexistent/x.yaml", NULL, 0, &t, &e) == -1 &&
		      e.code == ERR_NOTFOUND && strstr(e.msg, "/nonexistent/x.yaml"));
	}
}

/* YAML aliases: sops writes none, and following one can recurse forever (an
 * alias inside its own anchor) or blow up (aliases of aliases).  Both the
 * decryptor and the encryptor refuse them, quickly (values in the clear, so
 * that the alias is what stops the walk).  Reproduced with fuzz_sops; the
 * inputs are seeds in tests/fuzz/corpus/sops/alias_*.yaml. */
static void test_aliases(void)
{
	static const char meta[] = "sops:\n  lastmodified: '2020-01-01T00:00:00Z'\n  mac: x\n";
	static const char *const docs[] = {
	        "a: &x [*x]\n",
	        "a: &x {b: *x}\n",
	        "a_unencrypted: &v x\nb_unencrypted: *v\n",
	        "a_unencrypted: &a [x,x,x,x,x,x,x,x,x,x]\n"
	        "b_unencrypted: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
	        "c_unencrypted: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
	        "d_unencrypted: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
	        "e_unencrypted: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
	        "f_unencrypted: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
	        "g_unencrypted: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
	        "h_unencrypted: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]\n",
	};
	static const unsigned char key[32];
	char rcpt[AGE_RECIPIENT_MAX], id[AGE_IDENTITY_MAX];
	const char *ages[1] = {rcpt};
	struct sops_encrypt_opts o = {0};
	struct err e;
	size_t i;
	CHECK(age_keygen(id, rcpt, &e) == 0);
	OPENSSL_cleanse(id, sizeof(id));
	o.age = ages;
	o.nage = 1;
	for (i = 0; i < sizeof(docs) / sizeof(*docs); i++) {
		struct buf text = BUF_INIT, out = BUF_INIT;
		struct sops_file *f = NULL;
		struct sops_tree t;
		buf_appends(&text, docs[i]);
		buf_appends(&text, meta);
		CHECK(sops_parse(text.data, text.len, "alias.yaml", &f, &e) == 0);
		if (f) {
			CHECK(sops_decrypt(f, key, 0, &t, &e) == -1 && e.code == ERR_INVALID &&
			      strstr(e.msg, "line 1") && strstr(e.msg, "YAML alias"));
			if (!strstr(e.msg, "YAML alias"))
				fprintf(stderr, "decrypt, case %zu: %s\n", i, e.msg);
			sops_file_free(f);
		}
		CHECK(sops_encrypt(docs[i], strlen(docs[i]), "plain.yaml", &o, &out, &e) == -1 &&
		      e.code == ERR_INVALID && strstr(e.msg, "plain.yaml") &&
		      strstr(e.msg, "line 1") && strstr(e.msg, "YAML alias") && out.len == 0);
		if (!strstr(e.msg, "YAML alias"))
			fprintf(stderr, "encrypt, case %zu: %s\n", i, e.msg);
		buf_free(&out);
		buf_free(&text);
	}
}

/* Floats far from 1 are long in Go's 'f' format, the form sops encrypts and
 * hashes (1e70: "1" and 70 zeros; 5e-324: "0.", 323 zeros, "5").  Each must
 * be written and read whole: a truncated one decrypts to another number (or
 * not at all), and breaks the MAC of files sops wrote.  Found by fuzz_sops
 * (tests/fuzz/corpus/sops/long_float.yaml). */
static void test_long_floats(void)
{
	static const char plain[] = "big: 1e70\ntiny: 5e-324\nneg: -1.7976931348623157e308\n"
	                            "clear_unencrypted: 1e70\n";
	char rcpt[AGE_RECIPIENT_MAX], id[AGE_IDENTITY_MAX], big[72], tiny[330];
	const char *ages[1] = {rcpt};
	struct sops_encrypt_opts o = {0};
	struct sops_keys k = {0};
	struct buf out = BUF_INIT;
	struct sops_file *f = NULL;
	struct sops_tree t;
	unsigned char key[32];
	const struct sops_leaf *l;
	struct err e;
	CHECK(age_keygen(id, rcpt, &e) == 0);
	o.age = ages;
	o.nage = 1;
	k.age_key_text = id;
	k.no_gpg = 1;
	memset(big, '0', sizeof(big));
	big[0] = '1';
	big[71] = '\0';
	memset(tiny, '0', sizeof(tiny));
	tiny[1] = '.';
	tiny[325] = '5';
	tiny[326] = '\0';
	CHECK(sops_encrypt(plain, strlen(plain), "floats.yaml", &o, &out, &e) == 0);
	CHECK(out.len && sops_parse(out.data, out.len, "floats.yaml", &f, &e) == 0);
	if (f && sops_data_key(f, &k, key, NULL, 0, &e) == 0) {
		CHECK(sops_decrypt(f, key, 0, &t, &e) == 0);
		if (t.n) {
			CHECK((l = sops_tree_get(&t, "big")) && !strcmp(l->type, "float") &&
			      !strcmp(l->value, big));
			CHECK((l = sops_tree_get(&t, "tiny")) && !strcmp(l->type, "float") &&
			      !strcmp(l->value, tiny));
			CHECK((l = sops_tree_get(&t, "neg")) && l->value_len == 310 &&
			      !strncmp(l->value, "-17976931348623157", 18));
			CHECK((l = sops_tree_get(&t, "clear_unencrypted")) &&
			      !strcmp(l->value, "1e70"));
		} else {
			fprintf(stderr, "long floats: %s\n", e.msg);
		}
		sops_tree_free(&t);
	} else {
		CHECK(!"the data key of our own file");
	}
	OPENSSL_cleanse(id, sizeof(id));
	sops_file_free(f);
	buf_free(&out);
}

/* age: the three age vectors open with their identity files. */
static void test_age_vectors(void)
{
	static const struct {
		const char *file, *key, *recipient;
	} v[] = {
	        {"helm-secrets/secrets.age.yaml", "helm-secrets/key.txt",
	         "age1rh2xsjg8avja92j3jhtttuczgmqkz89lezxt4e3mmp5ukl5j4f9smvteju"},
	        {"sops-nix/secrets.yaml", "sops-nix/age-keys.txt",
	         "age1yt3tfqlfrwdwx0z0ynwplcr6qxcxfaqycuprpmy89nr83ltx74tqdpszlw"},
	        {"kustomize-controller/age.yaml", "kustomize-controller/age.txt",
	         "age1l44xcng8dqj32nlv6d930qvvrny05hglzcv9qpc7kxjc6902ma4qufys29"},
	};
	size_t i;
	for (i = 0; i < 3; i++) {
		char path[1200], key[1200], used[200];
		struct sops_keys k = {0};
		struct sops_file *f = NULL;
		struct sops_tree t;
		unsigned char dk[32], want[32];
		struct err e;
		vec_path(path, sizeof(path), v[i].file);
		vec_path(key, sizeof(key), v[i].key);
		k.age_key_file = key;
		k.no_gpg = 1;
		CHECK(sops_load(path, &f, &e) == 0);
		if (!f)
			continue;
		CHECK(sops_data_key(f, &k, dk, used, sizeof(used), &e) == 0);
		data_key_of(expected_entry(v[i].file), want);
		CHECK(!memcmp(dk, want, 32));
		CHECK(!strncmp(used, "age:", 4) && !strcmp(used + 4, v[i].recipient));
		sops_file_free(f);
		CHECK(sops_decrypt_file(path, &k, SOPS_COMMENTS, &t, &e) == 0);
		if (t.n)
			compare_tree(v[i].file, expected_entry(v[i].file), &t);
		CHECK(!strncmp(t.key_source, "age:", 4));
		sops_tree_free(&t);
		OPENSSL_cleanse(dk, sizeof(dk));
	}
	/* The wrong identity file: ERR_AUTH naming the file, the step, the
	 * recipients found and the identity file tried (and its recipient). */
	{
		char path[1200], key[1200];
		struct sops_keys k = {0};
		struct sops_tree t;
		struct err e;
		vec_path(path, sizeof(path), "helm-secrets/secrets.age.yaml");
		vec_path(key, sizeof(key), "sops-nix/age-keys.txt");
		k.age_key_file = key;
		CHECK(sops_decrypt_file(path, &k, 0, &t, &e) == -1);
		CHECK(e.code == ERR_AUTH);
		CHECK(strstr(e.msg, "secrets.age.yaml: finding the data key") != NULL);
		CHECK(strstr(e.msg,
		             "age1rh2xsjg8avja92j3jhtttuczgmqkz89lezxt4e3mmp5ukl5j4f9smvteju") !=
		      NULL);
		CHECK(strstr(e.msg, "sops-nix/age-keys.txt") != NULL);
		CHECK(strstr(e.msg,
		             "age1yt3tfqlfrwdwx0z0ynwplcr6qxcxfaqycuprpmy89nr83ltx74tqdpszlw") !=
		      NULL);
		CHECK(!strstr(e.msg, "AGE-SECRET-KEY"));
		printf("sops: wrong identity -> %s\n", e.msg);
		/* No identity at all. */
		k.age_key_file = NULL;
		CHECK(sops_decrypt_file(path, &k, 0, &t, &e) == -1 && e.code == ERR_AUTH &&
		      strstr(e.msg, "--sops-age-key-file"));
		/* An identity file that does not exist. */
		k.age_key_file = "/nonexistent/keys.txt";
		CHECK(sops_decrypt_file(path, &k, 0, &t, &e) == -1 && e.code == ERR_AUTH &&
		      strstr(e.msg, "/nonexistent/keys.txt"));
		/* SOPS_AGE_KEY-style text works too. */
		{
			struct buf txt = BUF_INIT;
			vec_path(key, sizeof(key), "helm-secrets/key.txt");
			CHECK(read_file(key, &txt) == 0);
			k.age_key_file = NULL;
			k.age_key_text = txt.data;
			CHECK(sops_decrypt_file(path, &k, 0, &t, &e) == 0 && t.n == 3);
			sops_tree_free(&t);
			buf_free_secure(&txt);
		}
	}
}

static void gpg_setup(void)
{
	char home[512], cmd[4096];
	snprintf(home, sizeof(home), "%s/gnupg", tmpdir);
	snprintf(
	        cmd, sizeof(cmd),
	        "mkdir -m 700 '%s' && GNUPGHOME='%s' gpg --batch --quiet --import "
	        "'%s/getsops-sops/sops_functional_tests_key.asc' '%s/sops-nix/key.asc' 2>/dev/null",
	        home, home, sops_dir, sops_dir);
	CHECK(system(cmd) == 0);
	setenv("GNUPGHOME", home, 1);
}

static void gpg_teardown(void)
{
	if (system("gpgconf --kill gpg-agent >/dev/null 2>&1")) {
		/* nothing to do: the agent may not have started */
	}
}

/* PGP: every PGP vector's data key through gpg, then a full decrypt. */
static void test_pgp_vectors(void)
{
	size_t i, n = 0;
	json_t *ent;
	json_array_foreach(expected, i, ent)
	{
		const char *file = json_string_value(json_object_get(ent, "file"));
		char path[1200], used[200];
		struct sops_keys k = {0};
		struct sops_file *f = NULL;
		unsigned char dk[32], want[32];
		struct err e;
		if (strcmp(json_string_value(json_object_get(ent, "key_kind")), "pgp") ||
		    !is_yaml_or_json(file))
			continue;
		vec_path(path, sizeof(path), file);
		CHECK(sops_load(path, &f, &e) == 0);
		if (!f)
			continue;
		CHECK(sops_data_key(f, &k, dk, used, sizeof(used), &e) == 0);
		if (e.code && used[0] == '\0')
			fprintf(stderr, "%s: %s\n", file, e.msg);
		data_key_of(ent, want);
		CHECK(!memcmp(dk, want, 32));
		CHECK(!strncmp(used, "pgp:", 4));
		if (json_is_true(json_object_get(ent, "mac_matches"))) {
			struct sops_tree t;
			CHECK(sops_decrypt_file(path, &k, 0, &t, &e) == 0);
			CHECK(t.n == json_array_size(json_object_get(ent, "leaves")));
			CHECK(!strncmp(t.key_source, "pgp:", 4));
			sops_tree_free(&t);
		} else {
			struct sops_tree t;
			CHECK(sops_decrypt_file(path, &k, 0, &t, &e) == -1 &&
			      strstr(e.msg, "no MAC") && strstr(e.msg, "no_mac.yaml: decrypting"));
		}
		sops_file_free(f);
		n++;
	}
	/* sops-nix/secrets.yaml through its PGP key (7FB8...) with no age key. */
	{
		char path[1200], used[200];
		struct sops_keys k = {0};
		struct sops_file *f = NULL;
		unsigned char dk[32], want[32];
		struct err e;
		vec_path(path, sizeof(path), "sops-nix/secrets.yaml");
		CHECK(sops_load(path, &f, &e) == 0);
		if (f) {
			CHECK(sops_data_key(f, &k, dk, used, sizeof(used), &e) == 0);
			data_key_of(expected_entry("sops-nix/secrets.yaml"), want);
			CHECK(!memcmp(dk, want, 32));
			CHECK_STR(used, "pgp:7FB89715AADA920D65D25E63F9BA9DEBD03F57C0");
			sops_file_free(f);
		}
	}
	/* gpg that cannot decrypt: its stderr is summarized; and no gpg at all. */
	{
		char path[1200];
		struct sops_keys k = {0};
		struct sops_tree t;
		struct err e;
		vec_path(path, sizeof(path), "getsops-sops/multiple_keys.yaml");
		k.gpg = "/bin/false";
		CHECK(sops_decrypt_file(path, &k, 0, &t, &e) == -1 && e.code == ERR_AUTH &&
		      strstr(e.msg, "status 1") &&
		      strstr(e.msg, "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"));
		k.gpg = "/nonexistent/gpg";
		CHECK(sops_decrypt_file(path, &k, 0, &t, &e) == -1 && strstr(e.msg, "not found"));
		setenv("SOPS_GPG_EXEC", "/bin/false", 1);
		k.gpg = NULL;
		CHECK(sops_decrypt_file(path, &k, 0, &t, &e) == -1 && strstr(e.msg, "status 1"));
		unsetenv("SOPS_GPG_EXEC");
	}
	printf("sops: %zu PGP vectors opened through gpg\n", n);
	CHECK(n >= 8);
}

/* The gpg error path with a real gpg that lacks the key. */
static void test_pgp_no_secret_key(void)
{
	char home[512], cmd[1024], path[1200];
	const char *old = getenv("GNUPGHOME");
	char saved[512];
	struct sops_keys k = {0};
	struct sops_tree t;
	struct err e;
	snprintf(saved, sizeof(saved), "%s", old ? old : "");
	snprintf(home, sizeof(home), "%s/gnupg-empty", tmpdir);
	snprintf(cmd, sizeof(cmd), "mkdir -m 700 '%s'", home);
	CHECK(system(cmd) == 0);
	setenv("GNUPGHOME", home, 1);
	vec_path(path, sizeof(path), "getsops-sops/format.enc.yaml");
	CHECK(sops_decrypt_file(path, &k, 0, &t, &e) == -1 && e.code == ERR_AUTH);
	CHECK(strstr(e.msg, "gpg exited with status 2") && strstr(e.msg, "No secret key"));
	printf("sops: gpg without the key -> %s\n", e.msg);
	gpg_teardown();
	setenv("GNUPGHOME", saved, 1);
}

static const char plaintext[] = "# bucket credentials\n"
                                "endpoint: https://s3.example.com\n"
                                "bucket: lab-images\n"
                                "access_key: AKIAEXAMPLE\n"
                                "secret_key: \"s3cr3t/with+chars==\"\n"
                                "region: eu-central-1\n"
                                "port: 9000\n"
                                "hexport: 0x10\n"
                                "enabled: true\n"
                                "quoted_bool: 'true'\n"
                                "ratio: 0.5\n"
                                "big: 1e21\n"
                                "tiny: .000001\n"
                                "empty: ''\n"
                                "nothing: null\n"
                                "when: 2024-01-02\n"
                                "unicode: \"gr\xc3\xbc\xc3\x9f dich\"\n"
                                "multi: |\n"
                                "  line one\n"
                                "  line two\n"
                                "nested:\n"
                                "  deeper:\n"
                                "    key: value\n"
                                "  list:\n"
                                "    - a\n"
                                "    - 2\n"
                                "note_unencrypted: stays in the clear\n"
                                "flag_unencrypted: false\n"
                                "section_unencrypted:\n"
                                "  inner: also clear\n";

static const struct {
	const char *aad, *value, *type;
	int encrypted;
} plain_expect[] = {
        {"endpoint:", "https://s3.example.com", "str", 1},
        {"bucket:", "lab-images", "str", 1},
        {"access_key:", "AKIAEXAMPLE", "str", 1},
        {"secret_key:", "s3cr3t/with+chars==", "str", 1},
        {"region:", "eu-central-1", "str", 1},
        {"port:", "9000", "int", 1},
        {"hexport:", "16", "int", 1},
        {"enabled:", "True", "bool", 1},
        {"quoted_bool:", "true", "str", 1},
        {"ratio:", "0.5", "float", 1},
        {"big:", "1000000000000000000000", "float", 1},
        {"tiny:", "0.000001", "float", 1},
        {"empty:", "", "str", 1},
        {"when:", "2024-01-02", "str", 1},
        {"unicode:", "gr\xc3\xbc\xc3\x9f dich", "str", 1},
        {"multi:", "line one\nline two\n", "str", 1},
        {"nested:deeper:key:", "value", "str", 1},
        {"nested:list:", "a", "str", 1},
        {"nested:list:", "2", "int", 1},
        {"note_unencrypted:", "stays in the clear", "", 0},
        {"flag_unencrypted:", "false", "", 0},
        {"section_unencrypted:inner:", "also clear", "", 0},
};

static void check_plain_tree(const struct sops_tree *t)
{
	size_t i, n = sizeof(plain_expect) / sizeof(*plain_expect);
	CHECK(t->n == n);
	for (i = 0; i < n && i < t->n; i++) {
		CHECK_STR(t->leaves[i].aad, plain_expect[i].aad);
		CHECK_STR(t->leaves[i].value, plain_expect[i].value);
		CHECK_STR(t->leaves[i].type, plain_expect[i].type);
		CHECK(t->leaves[i].encrypted == plain_expect[i].encrypted);
	}
	CHECK(sops_tree_get(t, "secret_key") && sops_tree_get(t, "region"));
	CHECK(!sops_tree_get(t, "nested") && !sops_tree_get(t, "key") && !sops_tree_get(t, "list"));
}

/* Pull the first armored age block out of an encrypted file (de-indented). */
static int extract_age_block(const char *text, struct buf *out)
{
	const char *b = strstr(text, "-----BEGIN AGE ENCRYPTED FILE-----");
	const char *end = b ? strstr(b, "-----END AGE ENCRYPTED FILE-----") : NULL;
	const char *p = b;
	if (!b || !end)
		return -1;
	end += strlen("-----END AGE ENCRYPTED FILE-----");
	while (p < end) {
		const char *le = strchr(p, '\n');
		while (*p == ' ')
			p++;
		if (!le || le > end)
			le = end;
		buf_append(out, p, (size_t)(le - p));
		buf_appends(out, "\n");
		p = le + 1;
	}
	return 0;
}

static void test_encrypt(void)
{
	char id[AGE_IDENTITY_MAX], rcpt[AGE_RECIPIENT_MAX], idfile[512], encfile[512],
	        blockfile[512], keyout[512], cmd[2048], used[200];
	const char *ages[1] = {rcpt};
	const char *pgps[1] = {"fbc7b9e2a4f9289ac0c1d4843d16cee4a27381b4"};
	struct sops_encrypt_opts o = {0};
	struct buf out = BUF_INIT, block = BUF_INIT, dk_cli = BUF_INIT;
	struct sops_keys k = {0};
	struct sops_file *f = NULL;
	struct sops_tree t;
	unsigned char dk[32];
	struct err e;
	CHECK(age_keygen(id, rcpt, &e) == 0);
	snprintf(idfile, sizeof(idfile), "%s/enc-id.txt", tmpdir);
	snprintf(encfile, sizeof(encfile), "%s/enc.sops.yaml", tmpdir);
	snprintf(blockfile, sizeof(blockfile), "%s/enc-block.age", tmpdir);
	snprintf(keyout, sizeof(keyout), "%s/enc-datakey", tmpdir);
	CHECK(write_file(idfile, id, strlen(id)) == 0);
	OPENSSL_cleanse(id, sizeof(id));
	o.age = ages;
	o.nage = 1;
	o.pgp = pgps;
	o.npgp = have_gpg ? 1 : 0;
	CHECK(sops_encrypt(plaintext, strlen(plaintext), "plain.yaml", &o, &out, &e) == 0);
	if (!out.len) {
		fprintf(stderr, "encrypt: %s\n", e.msg);
		return;
	}
	CHECK(write_file(encfile, out.data, out.len) == 0);
	/* Nothing secret in the clear; the clear fields are. */
	CHECK(!strstr(out.data, "AKIAEXAMPLE") && !strstr(out.data, "s3cr3t") &&
	      !strstr(out.data, "lab-images"));
	CHECK(strstr(out.data, "note_unencrypted: stays in the clear") != NULL);
	CHECK(strstr(out.data, "version: 3.9.0") &&
	      strstr(out.data, "unencrypted_suffix: _unencrypted"));
	CHECK(strstr(out.data, "recipient: ") && strstr(out.data, rcpt));
	/* Our decryptor, via age. */
	k.age_key_file = idfile;
	k.no_gpg = 1;
	CHECK(sops_decrypt_file(encfile, &k, 0, &t, &e) == 0);
	if (t.n)
		check_plain_tree(&t);
	sops_tree_free(&t);
	/* The same data key from age and (if present) from gpg. */
	CHECK(sops_load(encfile, &f, &e) == 0);
	CHECK(sops_data_key(f, &k, dk, used, sizeof(used), &e) == 0);
	CHECK(!strncmp(used, "age:", 4));
	if (have_gpg) {
		struct sops_keys kp = {0};
		unsigned char dk2[32];
		CHECK(sops_data_key(f, &kp, dk2, used, sizeof(used), &e) == 0);
		CHECK_STR(used, "pgp:FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4");
		CHECK(!memcmp(dk, dk2, 32));
		CHECK(sops_decrypt_file(encfile, &kp, 0, &t, &e) == 0);
		if (t.n)
			check_plain_tree(&t);
		sops_tree_free(&t);
		OPENSSL_cleanse(dk2, sizeof(dk2));
	}
	sops_file_free(f);
	/* The Debian age CLI opens the `enc` block to the same 32-byte key. */
	if (have_age_cli) {
		CHECK(extract_age_block(out.data, &block) == 0);
		CHECK(write_file(blockfile, block.data, block.len) == 0);
		CHECK(write_file(keyout, "", 0) == 0);
		snprintf(cmd, sizeof(cmd), "age -d -i '%s' -o '%s' '%s'", idfile, keyout,
		         blockfile);
		CHECK(system(cmd) == 0);
		CHECK(read_file(keyout, &dk_cli) == 0);
		CHECK(dk_cli.len == 32 && !memcmp(dk_cli.data, dk, 32));
	}
	OPENSSL_cleanse(dk, sizeof(dk));
	/* Bad inputs. */
	{
		const char *bad_r[1] = {"age1bogus"};
		const char *bad_p[1] = {"--output=/tmp/x"};
		struct sops_encrypt_opts b = {0};
		struct buf x = BUF_INIT;
		CHECK(sops_encrypt("a: b\n", 5, "p.yaml", &b, &x, &e) == -1 && e.code == ERR_USAGE);
		b.age = bad_r;
		b.nage = 1;
		CHECK(sops_encrypt("a: b\n", 5, "p.yaml", &b, &x, &e) == -1 && e.code == ERR_USAGE);
		b.nage = 0;
		b.pgp = bad_p;
		b.npgp = 1;
		CHECK(sops_encrypt("a: b\n", 5, "p.yaml", &b, &x, &e) == -1 && e.code == ERR_USAGE);
		b.age = ages;
		b.nage = 1;
		b.npgp = 0;
		CHECK(sops_encrypt("- a\n", 4, "p.yaml", &b, &x, &e) == -1 &&
		      e.code == ERR_INVALID);
		CHECK(sops_encrypt("a: [\n", 5, "p.yaml", &b, &x, &e) == -1 &&
		      e.code == ERR_INVALID);
		CHECK(sops_encrypt("a: b\nsops: {}\n", 14, "p.yaml", &b, &x, &e) == -1 &&
		      strstr(e.msg, "already"));
		CHECK(x.len == 0);
		buf_free(&x);
	}
	buf_free(&out);
	buf_free(&block);
	buf_free_secure(&dk_cli);
}

/* credentials_resolve: precedence, missing fields, the file path. */
static void clear_env(void)
{
	unsetenv("E2_ENDPOINT");
	unsetenv("E2_BUCKET");
	unsetenv("E2_ACCESS_KEY");
	unsetenv("E2_SECRET_KEY");
	unsetenv("E2_REGION");
	unsetenv("SOPS_AGE_KEY_FILE");
	unsetenv("SOPS_AGE_KEY");
}

static void test_credentials(void)
{
	char id[AGE_IDENTITY_MAX], rcpt[AGE_RECIPIENT_MAX], idfile[512], credfile[512],
	        partial[512], wrongid[512], home[512];
	const char *ages[1] = {rcpt};
	struct sops_encrypt_opts o = {0};
	struct cred_opts co = {0};
	struct s3_config c;
	struct buf out = BUF_INIT;
	struct err e;
	clear_env();
	snprintf(home, sizeof(home), "%s/home", tmpdir);
	setenv("HOME", home, 1); /* no default ~/.config/sops/age/keys.txt */
	unsetenv("XDG_CONFIG_HOME");

	/* Environment only. */
	setenv("E2_ENDPOINT", "http://127.0.0.1:9000", 1);
	setenv("E2_BUCKET", "envbucket", 1);
	setenv("E2_ACCESS_KEY", "envak", 1);
	setenv("E2_SECRET_KEY", "envsk", 1);
	CHECK(credentials_resolve(&co, &c, &e) == 0);
	CHECK_STR(c.endpoint, "http://127.0.0.1:9000");
	CHECK_STR(c.bucket, "envbucket");
	CHECK_STR(c.region, "us-east-1");
	CHECK(c.ca_bundle == NULL && c.max_attempts == 5);
	credentials_config_clear(&c);
	/* Command-line --endpoint/--bucket beat the environment. */
	co.endpoint = "https://cli.example";
	co.bucket = "clibucket";
	co.ca_bundle = "/etc/ca.pem";
	setenv("E2_REGION", "eu-west-1", 1);
	CHECK(credentials_resolve(&co, &c, &e) == 0);
	CHECK_STR(c.endpoint, "https://cli.example");
	CHECK_STR(c.bucket, "clibucket");
	CHECK_STR(c.region, "eu-west-1");
	CHECK_STR(c.ca_bundle, "/etc/ca.pem");
	credentials_config_clear(&c);
	memset(&co, 0, sizeof(co));
	/* Nothing: every field named with both ways to set it. */
	clear_env();
	CHECK(credentials_resolve(&co, &c, &e) == -1 && e.code == ERR_USAGE);
	CHECK(strstr(e.msg, "endpoint (set E2_ENDPOINT or pass --endpoint") &&
	      strstr(e.msg, "bucket (set E2_BUCKET") &&
	      strstr(e.msg, "access_key (set E2_ACCESS_KEY") &&
	      strstr(e.msg, "secret_key (set E2_SECRET_KEY") && strstr(e.msg, "--credentials"));
	CHECK(c.endpoint == NULL);

	/* A SOPS credentials file made by our encryptor. */
	CHECK(age_keygen(id, rcpt, &e) == 0);
	snprintf(idfile, sizeof(idfile), "%s/cred-id.txt", tmpdir);
	CHECK(write_file(idfile, id, strlen(id)) == 0);
	OPENSSL_cleanse(id, sizeof(id));
	o.age = ages;
	o.nage = 1;
	{
		const char *p = "endpoint: http://file.example:8080\nbucket: filebucket\n"
		                "access_key: fileak\nsecret_key: file-secret-key-value\n";
		CHECK(sops_encrypt(p, strlen(p), "creds.yaml", &o, &out, &e) == 0);
		snprintf(credfile, sizeof(credfile), "%s/creds.sops.yaml", tmpdir);
		CHECK(write_file(credfile, out.data, out.len) == 0);
		buf_reset(&out);
		p = "endpoint: http://file.example:8080\nbucket: filebucket\nsecret_key: x\n";
		CHECK(sops_encrypt(p, strlen(p), "partial.yaml", &o, &out, &e) == 0);
		snprintf(partial, sizeof(partial), "%s/partial.sops.yaml", tmpdir);
		CHECK(write_file(partial, out.data, out.len) == 0);
	}
	co.credentials_path = credfile;
	co.age_key_file = idfile;
	CHECK(credentials_resolve(&co, &c, &e) == 0);
	CHECK_STR(c.endpoint, "http://file.example:8080");
	CHECK_STR(c.bucket, "filebucket");
	CHECK_STR(c.access_key, "fileak");
	CHECK_STR(c.secret_key, "file-secret-key-value");
	CHECK_STR(c.region, "us-east-1");
	credentials_config_clear(&c);
	/* SOPS_AGE_KEY_FILE when no flag. */
	co.age_key_file = NULL;
	setenv("SOPS_AGE_KEY_FILE", idfile, 1);
	CHECK(credentials_resolve(&co, &c, &e) == 0);
	credentials_config_clear(&c);
	unsetenv("SOPS_AGE_KEY_FILE");
	/* The default sops path. */
	{
		char cmd[2048], def[600];
		snprintf(def, sizeof(def), "%s/.config/sops/age", home);
		snprintf(cmd, sizeof(cmd), "mkdir -p '%s' && cp '%s' '%s/keys.txt'", def, idfile,
		         def);
		CHECK(system(cmd) == 0);
		CHECK(credentials_resolve(&co, &c, &e) == 0);
		credentials_config_clear(&c);
		snprintf(cmd, sizeof(cmd), "rm -f '%s/keys.txt'", def);
		CHECK(system(cmd) == 0);
	}
	/* The environment wins per field over the file. */
	co.age_key_file = idfile;
	setenv("E2_ACCESS_KEY", "envak", 1);
	setenv("E2_REGION", "ap-south-1", 1);
	CHECK(credentials_resolve(&co, &c, &e) == 0);
	CHECK_STR(c.access_key, "envak");
	CHECK_STR(c.secret_key, "file-secret-key-value");
	CHECK_STR(c.region, "ap-south-1");
	credentials_config_clear(&c);
	clear_env();
	/* A file without access_key: ERR_USAGE naming it and the file. */
	co.credentials_path = partial;
	CHECK(credentials_resolve(&co, &c, &e) == -1 && e.code == ERR_USAGE);
	CHECK(strstr(e.msg, "access_key") && strstr(e.msg, "partial.sops.yaml") &&
	      !strstr(e.msg, "secret_key ("));
	/* The wrong identity: ERR_AUTH; never a secret in the message. */
	{
		char wid[AGE_IDENTITY_MAX], wr[AGE_RECIPIENT_MAX];
		CHECK(age_keygen(wid, wr, &e) == 0);
		snprintf(wrongid, sizeof(wrongid), "%s/wrong-id.txt", tmpdir);
		CHECK(write_file(wrongid, wid, strlen(wid)) == 0);
		co.credentials_path = credfile;
		co.age_key_file = wrongid;
		CHECK(credentials_resolve(&co, &c, &e) == -1 && e.code == ERR_AUTH);
		CHECK(strstr(e.msg, "credentials file") && strstr(e.msg, "creds.sops.yaml") &&
		      strstr(e.msg, rcpt) && strstr(e.msg, wr) && strstr(e.msg, "wrong-id.txt"));
		CHECK(!strstr(e.msg, "AGE-SECRET-KEY") && !strstr(e.msg, "file-secret-key-value"));
		printf("credentials: wrong key -> %s\n", e.msg);
		OPENSSL_cleanse(wid, sizeof(wid));
	}
	/* A tampered file: ERR_INVALID with the step. */
	{
		struct buf b = BUF_INIT;
		char tampered[600];
		char *p;
		CHECK(read_file(credfile, &b) == 0);
		p = strstr(b.data, "bucket: ENC[AES256_GCM,data:");
		CHECK(p != NULL);
		if (p) {
			p += strlen("bucket: ENC[AES256_GCM,data:");
			*p = *p == 'A' ? 'B' : 'A';
		}
		snprintf(tampered, sizeof(tampered), "%s/tampered.sops.yaml", tmpdir);
		CHECK(write_file(tampered, b.data, b.len) == 0);
		co.credentials_path = tampered;
		co.age_key_file = idfile;
		CHECK(credentials_resolve(&co, &c, &e) == -1 && e.code == ERR_INVALID);
		CHECK(strstr(e.msg, "tampered.sops.yaml: decrypting: value of bucket:") != NULL);
		printf("credentials: tampered -> %s\n", e.msg);
		buf_free(&b);
	}
	/* A complete environment does not need the file (nor its key). */
	setenv("E2_ENDPOINT", "http://127.0.0.1:9000", 1);
	setenv("E2_BUCKET", "envbucket", 1);
	setenv("E2_ACCESS_KEY", "envak", 1);
	setenv("E2_SECRET_KEY", "envsk", 1);
	co.credentials_path = "/nonexistent/creds.yaml";
	CHECK(credentials_resolve(&co, &c, &e) == 0);
	credentials_config_clear(&c);
	clear_env();
	/* A missing file. */
	CHECK(credentials_resolve(&co, &c, &e) == -1 && e.code == ERR_NOTFOUND &&
	      strstr(e.msg, "/nonexistent/creds.yaml"));
	buf_free(&out);
}

int main(void)
{
	const char *data = getenv("TEST_DATA"), *t = getenv("TMPDIR");
	char path[1200], cmd[600];
	json_error_t je;
	if (!data) {
		fprintf(stderr, "TEST_DATA is not set\n");
		return 1;
	}
	snprintf(sops_dir, sizeof(sops_dir), "%s/sops", data);
	snprintf(path, sizeof(path), "%s/expected.json", sops_dir);
	expected = json_load_file(path, 0, &je);
	if (!expected) {
		fprintf(stderr, "%s: %s\n", path, je.text);
		return 1;
	}
	snprintf(tmpdir, sizeof(tmpdir), "%s/test_sops.XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	have_gpg = system("gpg --version >/dev/null 2>&1") == 0;
	have_age_cli = system("age --version >/dev/null 2>&1") == 0;
	unsetenv("SOPS_AGE_KEY_FILE");
	unsetenv("SOPS_AGE_KEY");
	unsetenv("SOPS_GPG_EXEC");

	test_vectors_with_data_key();
	test_tampering();
	test_bad_files();
	test_age_vectors();
	if (have_gpg) {
		gpg_setup();
		test_pgp_vectors();
	} else {
		printf("sops: SKIPPED the PGP path: gpg is not installed (apt-get install "
		       "gnupg)\n");
	}
	test_encrypt();
	if (have_gpg) {
		gpg_teardown();
		test_pgp_no_secret_key();
	}
	if (!have_age_cli)
		printf("sops: SKIPPED the age CLI check of the encryptor: age is not installed\n");
	test_credentials();
	test_aliases();
	test_long_floats();
	json_decref(expected);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd)) {
		/* best effort */
	}
	return check_report("sops");
}
