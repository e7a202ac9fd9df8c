#include "hash.h"

#include "hex.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

struct hash {
	EVP_MD_CTX *ctx;
	const EVP_MD *md;
};

static const EVP_MD *alg_md(enum hash_alg alg)
{
	return alg == HASH_SHA512 ? EVP_sha512() : EVP_sha256();
}

struct hash *hash_new(enum hash_alg alg)
{
	struct hash *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->md = alg_md(alg);
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx || !EVP_DigestInit_ex(h->ctx, h->md, NULL)) {
		hash_free(h);
		return NULL;
	}
	return h;
}

void hash_update(struct hash *h, const void *data, size_t n)
{
	EVP_DigestUpdate(h->ctx, data, n);
}

size_t hash_final(struct hash *h, unsigned char *out)
{
	unsigned int len = 0;
	EVP_DigestFinal_ex(h->ctx, out, &len);
	EVP_DigestInit_ex(h->ctx, h->md, NULL);
	return len;
}

void hash_final_hex(struct hash *h, char *hex)
{
	unsigned char d[HASH_MAX_LEN];
	size_t n = hash_final(h, d);
	hex_encode(d, n, hex);
}

void hash_free(struct hash *h)
{
	if (!h)
		return;
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

size_t hash_len(enum hash_alg alg)
{
	return alg == HASH_SHA512 ? 64 : 32;
}

const char *hash_alg_name(enum hash_alg alg)
{
	return alg == HASH_SHA512 ? "sha512" : "sha256";
}

int hash_alg_parse(const char *name, enum hash_alg *out)
{
	if (!strcmp(name, "sha256"))
		*out = HASH_SHA256;
	else if (!strcmp(name, "sha512"))
		*out = HASH_SHA512;
	else
		return -1;
	return 0;
}

void hash_sha256(const void *data, size_t n, unsigned char out[32])
{
	unsigned int len = 32;
	EVP_Digest(data, n, out, &len, EVP_sha256(), NULL);
}

void hash_sha256_hex(const void *data, size_t n, char *hex)
{
	unsigned char d[32];
	hash_sha256(data, n, d);
	hex_encode(d, 32, hex);
}

int hash_checksum_parse(const char *s, enum hash_alg *alg, char *hex)
{
	const char *colon = strchr(s, ':');
	char name[16];
	size_t digits;
	if (!colon || (size_t)(colon - s) >= sizeof(name))
		return -1;
	memcpy(name, s, (size_t)(colon - s));
	name[colon - s] = '\0';
	if (hash_alg_parse(name, alg))
		return -1;
	digits = 2 * hash_len(*alg);
	if (strlen(colon + 1) != digits)
		return -1;
	for (size_t i = 0; i < digits; i++) {
		char c = colon[1 + i];
		if (!isxdigit((unsigned char)c))
			return -1;
		hex[i] = (char)tolower((unsigned char)c);
	}
	hex[digits] = '\0';
	return 0;
}
