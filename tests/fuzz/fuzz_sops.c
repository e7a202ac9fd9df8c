/* libFuzzer target: any bytes -> sops_parse, then the data key through age
 * (never gpg) and sops_decrypt with the MAC check; or sops_encrypt.
 *
 * Keys: the fuzz identity (fuzz_keys.h; the seeds in corpus/sops are
 * encrypted to it), and, when the directory FUZZ_SOPS_VECTORS
 * (tests/data/sops) is there, its age identities and the data key of each
 * vector by its `lastmodified`, so the upstream vectors (PGP ones too) get
 * past the AES layer and into the MAC check.  Without a key, the all-zero key
 * runs the refusal paths.
 *
 * Input that starts with PLAIN_MARK and is not a SOPS file is a plaintext for
 * sops_encrypt.
 *
 * Invariants: a refusal says why and returns nothing; what decrypts with the
 * comments also decrypts without them, with the same leaves and MAC; what
 * decrypts with a key does not with another one; what sops_encrypt writes
 * decrypts. */
#include "store/secrets/sops.h"

#include "common/file.h"
#include "fuzz_keys.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_VECTORS 64
#define PLAIN_MARK  "# plaintext\n"

static struct buf identities = BUF_INIT;
static struct {
	char lastmodified[64];
	unsigned char key[SOPS_DATA_KEY_LEN];
} vectors[MAX_VECTORS];
static size_t nvectors;

static int unhex(const char *s, unsigned char *out, size_t n)
{
	if (strlen(s) != 2 * n)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (unsigned char)v;
	}
	return 0;
}

/* The identities and data keys of tests/data/sops (see its README). */
static void load_vectors(const char *dir)
{
	char path[4096];
	json_error_t je;
	json_t *root, *v;
	size_t i;
	snprintf(path, sizeof(path), "%s/expected.json", dir);
	root = json_load_file(path, 0, &je);
	if (!root) {
		fprintf(stderr, "fuzz_sops: no vectors (%s: %s); fuzz identity only\n", path,
		        je.text);
		return;
	}
	json_array_foreach(root, i, v)
	{
		const char *kind = json_string_value(json_object_get(v, "key_kind"));
		const char *kf = json_string_value(json_object_get(v, "key_file"));
		const char *lm = json_string_value(json_object_get(v, "lastmodified"));
		const char *hex = json_string_value(json_object_get(v, "data_key_hex"));
		if (kind && kf && !strcmp(kind, "age")) {
			struct err e;
			snprintf(path, sizeof(path), "%s/%s", dir, kf);
			if (file_read_all(path, 1 << 16, &identities, &e) ||
			    buf_appends(&identities, "\n"))
				fprintf(stderr, "fuzz_sops: %s\n", e.msg);
		}
		if (lm && hex && nvectors < MAX_VECTORS &&
		    strlen(lm) < sizeof(vectors[0].lastmodified) &&
		    !unhex(hex, vectors[nvectors].key, SOPS_DATA_KEY_LEN))
			strcpy(vectors[nvectors++].lastmodified, lm);
	}
	json_decref(root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if (buf_appends(&identities, FUZZ_AGE_IDENTITY))
		abort();
	load_vectors(FUZZ_SOPS_VECTORS);
	return 0;
}

static void check_tree(const struct sops_tree *t)
{
	if (strlen(t->mac) != 128 || strspn(t->mac, "0123456789ABCDEF") != 128)
		abort();
	for (size_t i = 0; i < t->n; i++) {
		const struct sops_leaf *l = &t->leaves[i];
		size_t al = strlen(l->aad);
		if (!al || l->aad[al - 1] != ':' || !l->value || l->value[l->value_len] ||
		    l->depth < 1)
			abort();
		if (l->depth == 1 && !l->in_list) {
			char *k = strndup(l->aad, al - 1);
			const struct sops_leaf *got = k ? sops_tree_get(t, k) : NULL;
			if (!got || strcmp(got->aad, l->aad) || got->depth != 1 || got->in_list)
				abort();
			free(k);
		}
	}
	for (size_t i = 0; i < t->ncomments; i++)
		if (!t->comments[i].aad || !t->comments[i].value ||
		    t->comments[i].value[t->comments[i].value_len])
			abort();
}

static void same_leaves(const struct sops_tree *a, const struct sops_tree *b)
{
	if (a->n != b->n || strcmp(a->mac, b->mac))
		abort();
	for (size_t i = 0; i < a->n; i++) {
		const struct sops_leaf *x = &a->leaves[i], *y = &b->leaves[i];
		if (strcmp(x->aad, y->aad) || x->value_len != y->value_len ||
		    memcmp(x->value, y->value, x->value_len) || strcmp(x->type, y->type) ||
		    x->encrypted != y->encrypted || x->in_list != y->in_list ||
		    x->depth != y->depth)
			abort();
	}
}

static int decrypt(const struct sops_file *f, const unsigned char key[SOPS_DATA_KEY_LEN])
{
	struct sops_tree plain, with_comments, other;
	unsigned char wrong[SOPS_DATA_KEY_LEN];
	struct err e;
	int rc = sops_decrypt(f, key, 0, &plain, &e), rc2;

	if (rc && (e.code != ERR_INVALID || plain.n || plain.leaves))
		abort();
	rc2 = sops_decrypt(f, key, SOPS_COMMENTS, &with_comments, &e);
	if (rc2 && (e.code != ERR_INVALID || with_comments.n || with_comments.ncomments))
		abort();
	if (!rc2 && rc)
		abort(); /* the comments can only add reasons to refuse */
	if (!rc) {
		check_tree(&plain);
		if (!rc2) {
			check_tree(&with_comments);
			same_leaves(&plain, &with_comments);
		}
		memcpy(wrong, key, sizeof(wrong));
		wrong[0] ^= 1;
		if (!sops_decrypt(f, wrong, 0, &other, &e))
			abort(); /* the MAC is encrypted with the data key */
	}
	sops_tree_free(&plain);
	sops_tree_free(&with_comments);
	return rc;
}

/* A plaintext (a comment line PLAIN_MARK first: encrypting costs more than all
 * the rest, so only the inputs that ask for it): what sops_encrypt writes
 * opens with our decryptor, MAC and all. */
static void encrypt_roundtrip(const uint8_t *data, size_t size)
{
	const char *rcpt[1] = {FUZZ_AGE_RECIPIENT};
	struct sops_encrypt_opts o = {.age = rcpt, .nage = 1, .now = 1734688800};
	struct sops_keys k = {.age_key_text = FUZZ_AGE_IDENTITY, .no_gpg = 1};
	struct buf out = BUF_INIT;
	struct sops_file *f = NULL;
	struct sops_tree t;
	unsigned char key[SOPS_DATA_KEY_LEN];
	struct err e;

	if (sops_encrypt((const char *)data, size, "plain.yaml", &o, &out, &e)) {
		if (e.code != ERR_INVALID || out.len)
			abort();
		return;
	}
	if (sops_parse(out.data, out.len, "enc.yaml", &f, &e) ||
	    sops_data_key(f, &k, key, NULL, 0, &e) || sops_decrypt(f, key, 0, &t, &e)) {
		fprintf(stderr, "fuzz_sops: our own encryption does not open: %s\n", e.msg);
		abort();
	}
	check_tree(&t);
	sops_tree_free(&t);
	sops_file_free(f);
	buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const unsigned char zero[SOPS_DATA_KEY_LEN];
	struct sops_file *f = NULL;
	struct sops_keys k = {.age_key_text = identities.data, .no_gpg = 1};
	unsigned char key[SOPS_DATA_KEY_LEN];
	char used[160];
	struct err e;
	int tried = 0;

	if (sops_parse((const char *)data, size, "fuzz.yaml", &f, &e)) {
		if (f || (e.code != ERR_INVALID && e.code != ERR_IO))
			abort();
		if (size >= strlen(PLAIN_MARK) && !memcmp(data, PLAIN_MARK, strlen(PLAIN_MARK)))
			encrypt_roundtrip(data, size);
		return 0;
	}
	if (!sops_file_age_recipients(f) || !sops_file_pgp_fingerprints(f) ||
	    !sops_file_lastmodified(f))
		abort();

	if (!sops_data_key(f, &k, key, used, sizeof(used), &e)) {
		if (strncmp(used, "age:", 4))
			abort();
		decrypt(f, key);
		tried = 1;
	} else if (e.code != ERR_AUTH && e.code != ERR_INVALID) {
		abort();
	}
	for (size_t i = 0; !tried && i < nvectors; i++)
		if (!strcmp(vectors[i].lastmodified, sops_file_lastmodified(f)) &&
		    !decrypt(f, vectors[i].key))
			tried = 1;
	if (!tried)
		decrypt(f, zero);
	sops_file_free(f);
	return 0;
}
