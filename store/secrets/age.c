/* age-encryption.org/v1 (X25519 only) on OpenSSL 3.  See age.h. */
#include "store/secrets/age.h"

#include "common/file.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define AGE_FILE_KEY_LEN      16
#define AGE_CHUNK             65536
#define AGE_TAG               16
#define AGE_NONCE_LEN         16
#define AGE_MAX_STANZAS       256
#define AGE_ARMOR_BEGIN       "-----BEGIN AGE ENCRYPTED FILE-----"
#define AGE_ARMOR_END         "-----END AGE ENCRYPTED FILE-----"
#define AGE_VERSION_LINE      "age-encryption.org/v1"
#define AGE_X25519_INFO       "age-encryption.org/v1/X25519"
#define AGE_IDENTITY_FILE_MAX (1 << 20)

/* ---------------------------------------------------------------- base64 */

static const char b64_alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

size_t age_b64_decoded_max(size_t inlen)
{
	return inlen / 4 * 3 + 3;
}

int age_b64_decode(const char *in, size_t inlen, int padded, unsigned char *out, size_t *outlen)
{
	size_t i, o = 0, data = inlen, pad = 0;
	uint32_t acc = 0;
	int bits = 0;
	if (padded) {
		if (inlen % 4)
			return -1;
		while (data > 0 && in[data - 1] == '=' && pad < 2) {
			data--;
			pad++;
		}
	} else if (inlen % 4 == 1) {
		return -1;
	}
	for (i = 0; i < data; i++) {
		int v = b64_value((unsigned char)in[i]);
		if (v < 0)
			return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	/* Canonical: leftover bits must be zero. */
	if (acc != 0)
		return -1;
	*outlen = o;
	return 0;
}

int age_b64_encode(const unsigned char *in, size_t inlen, int padded, struct buf *out)
{
	size_t i;
	char q[4];
	for (i = 0; i + 3 <= inlen; i += 3) {
		uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
		q[0] = b64_alphabet[(v >> 18) & 63];
		q[1] = b64_alphabet[(v >> 12) & 63];
		q[2] = b64_alphabet[(v >> 6) & 63];
		q[3] = b64_alphabet[v & 63];
		if (buf_append(out, q, 4))
			return -1;
	}
	if (inlen - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;
		q[0] = b64_alphabet[(v >> 18) & 63];
		q[1] = b64_alphabet[(v >> 12) & 63];
		q[2] = q[3] = '=';
		if (buf_append(out, q, padded ? 4 : 2))
			return -1;
	} else if (inlen - i == 2) {
		uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);
		q[0] = b64_alphabet[(v >> 18) & 63];
		q[1] = b64_alphabet[(v >> 12) & 63];
		q[2] = b64_alphabet[(v >> 6) & 63];
		q[3] = '=';
		if (buf_append(out, q, padded ? 4 : 3))
			return -1;
	}
	if (!out->data && buf_reserve(out, 0))
		return -1;
	return 0;
}

/* ---------------------------------------------------------------- bech32 */

static const char bech32_charset[] = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";

static uint32_t bech32_polymod_step(uint32_t chk, unsigned v)
{
	static const uint32_t gen[5] = {0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3};
	uint32_t b = chk >> 25;
	int i;
	chk = ((chk & 0x1ffffff) << 5) ^ v;
	for (i = 0; i < 5; i++)
		if ((b >> i) & 1)
			chk ^= gen[i];
	return chk;
}

static uint32_t bech32_hrp_checksum(const char *hrp, size_t hrplen)
{
	uint32_t chk = 1;
	size_t i;
	for (i = 0; i < hrplen; i++)
		chk = bech32_polymod_step(chk, (unsigned)tolower((unsigned char)hrp[i]) >> 5);
	chk = bech32_polymod_step(chk, 0);
	for (i = 0; i < hrplen; i++)
		chk = bech32_polymod_step(chk, (unsigned)tolower((unsigned char)hrp[i]) & 31);
	return chk;
}

/* Decode Bech32 (BIP 173 checksum, no length limit, as age uses it) with the
 * expected HRP (compared case-insensitively) into exactly outlen bytes. */
static int bech32_decode(const char *s, size_t slen, const char *hrp, unsigned char *out,
                         size_t outlen)
{
	size_t hrplen = strlen(hrp), i, sep = 0, o = 0;
	int lower = 0, upper = 0, bits = 0;
	uint32_t chk, acc = 0;
	for (i = 0; i < slen; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 33 || c > 126)
			return -1;
		if (islower(c))
			lower = 1;
		if (isupper(c))
			upper = 1;
		if (c == '1')
			sep = i;
	}
	if (lower && upper)
		return -1;
	if (sep != hrplen || slen < sep + 7 || strncasecmp(s, hrp, hrplen))
		return -1;
	chk = bech32_hrp_checksum(s, hrplen);
	for (i = sep + 1; i < slen; i++) {
		const char *p = strchr(bech32_charset, tolower((unsigned char)s[i]));
		unsigned v;
		if (!p || !*p)
			return -1;
		v = (unsigned)(p - bech32_charset);
		chk = bech32_polymod_step(chk, v);
		if (i < slen - 6) {
			acc = (acc << 5) | v;
			bits += 5;
			if (bits >= 8) {
				bits -= 8;
				if (o >= outlen)
					return -1;
				out[o++] = (unsigned char)(acc >> bits);
				acc &= (1u << bits) - 1;
			}
		}
	}
	if (chk != 1 || bits >= 5 || acc != 0 || o != outlen)
		return -1;
	return 0;
}

static void bech32_encode(const char *hrp, const unsigned char *data, size_t len, int upper,
                          char *out, size_t outcap)
{
	unsigned char words[128];
	size_t nw = 0, i, hrplen = strlen(hrp), p = 0;
	uint32_t acc = 0, chk;
	int bits = 0;
	for (i = 0; i < len && nw < sizeof(words) - 2; i++) {
		acc = (acc << 8) | data[i];
		bits += 8;
		while (bits >= 5) {
			bits -= 5;
			words[nw++] = (acc >> bits) & 31;
		}
		acc &= (1u << bits) - 1;
	}
	if (bits > 0)
		words[nw++] = (acc << (5 - bits)) & 31;
	chk = bech32_hrp_checksum(hrp, hrplen);
	for (i = 0; i < nw; i++)
		chk = bech32_polymod_step(chk, words[i]);
	for (i = 0; i < 6; i++)
		chk = bech32_polymod_step(chk, 0);
	chk ^= 1;
	if (hrplen + 1 + nw + 6 + 1 > outcap) {
		out[0] = '\0';
		return;
	}
	for (i = 0; i < hrplen; i++)
		out[p++] = (char)(upper ? toupper((unsigned char)hrp[i])
		                        : tolower((unsigned char)hrp[i]));
	out[p++] = '1';
	for (i = 0; i < nw + 6; i++) {
		unsigned v = i < nw ? words[i] : (chk >> (5 * (5 - (i - nw)))) & 31;
		char c = bech32_charset[v];
		out[p++] = (char)(upper ? toupper((unsigned char)c) : c);
	}
	out[p] = '\0';
	OPENSSL_cleanse(words, sizeof(words));
}

/* ---------------------------------------------------------------- primitives */

/* out = X25519(priv, peer); 0, or -1 when OpenSSL fails or the result is the
 * all-zero value (a low-order peer point). */
static int x25519(const unsigned char priv[32], const unsigned char peer[32], unsigned char out[32])
{
	static const unsigned char zero[32];
	EVP_PKEY *pk = NULL, *pp = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	size_t len = 32;
	int rc = -1;
	pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, 32);
	pp = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer, 32);
	if (!pk || !pp)
		goto out;
	ctx = EVP_PKEY_CTX_new(pk, NULL);
	if (!ctx || EVP_PKEY_derive_init(ctx) <= 0 || EVP_PKEY_derive_set_peer(ctx, pp) <= 0 ||
	    EVP_PKEY_derive(ctx, out, &len) <= 0 || len != 32)
		goto out;
	if (CRYPTO_memcmp(out, zero, 32) == 0)
		goto out;
	rc = 0;
out:
	if (rc)
		OPENSSL_cleanse(out, 32);
	EVP_PKEY_CTX_free(ctx);
	EVP_PKEY_free(pk);
	EVP_PKEY_free(pp);
	return rc;
}

static int x25519_public(const unsigned char priv[32], unsigned char pub[32])
{
	EVP_PKEY *pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, 32);
	size_t len = 32;
	int rc = -1;
	if (pk && EVP_PKEY_get_raw_public_key(pk, pub, &len) > 0 && len == 32)
		rc = 0;
	EVP_PKEY_free(pk);
	return rc;
}

static int hkdf_sha256(const unsigned char *ikm, size_t ikmlen, const unsigned char *salt,
                       size_t saltlen, const char *info, unsigned char out[32])
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM params[5], *p = params;
	int rc = -1;
	if (!ctx)
		goto out;
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen);
	if (saltlen)
		*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt,
		                                         saltlen);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info));
	*p = OSSL_PARAM_construct_end();
	if (EVP_KDF_derive(ctx, out, 32, params) > 0)
		rc = 0;
out:
	EVP_KDF_CTX_free(ctx);
	EVP_KDF_free(kdf);
	return rc;
}

/* ChaCha20-Poly1305 seal/open, empty AAD.  open: inlen includes the tag. */
static int chacha_seal(const unsigned char key[32], const unsigned char nonce[12],
                       const unsigned char *in, size_t inlen, unsigned char *out)
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int n, rc = -1;
	if (!c || EVP_EncryptInit_ex(c, EVP_chacha20_poly1305(), NULL, key, nonce) != 1)
		goto out;
	if (inlen && EVP_EncryptUpdate(c, out, &n, in, (int)inlen) != 1)
		goto out;
	if (EVP_EncryptFinal_ex(c, out + inlen, &n) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, AGE_TAG, out + inlen) != 1)
		goto out;
	rc = 0;
out:
	EVP_CIPHER_CTX_free(c);
	return rc;
}

static int chacha_open(const unsigned char key[32], const unsigned char nonce[12],
                       const unsigned char *in, size_t inlen, unsigned char *out)
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	size_t ctlen = 0;
	int n, rc = -1;
	if (!c || inlen < AGE_TAG)
		goto out;
	ctlen = inlen - AGE_TAG;
	if (EVP_DecryptInit_ex(c, EVP_chacha20_poly1305(), NULL, key, nonce) != 1)
		goto out;
	if (ctlen && EVP_DecryptUpdate(c, out, &n, in, (int)ctlen) != 1)
		goto out;
	if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, AGE_TAG, (void *)(in + ctlen)) != 1 ||
	    EVP_DecryptFinal_ex(c, out + ctlen, &n) != 1)
		goto out;
	rc = 0;
out:
	if (rc && ctlen)
		OPENSSL_cleanse(out, ctlen);
	EVP_CIPHER_CTX_free(c);
	return rc;
}

static int header_mac(const unsigned char file_key[AGE_FILE_KEY_LEN], const void *hdr,
                      size_t hdrlen, unsigned char mac[32])
{
	unsigned char key[32];
	unsigned int maclen = 32;
	int rc = -1;
	if (hkdf_sha256(file_key, AGE_FILE_KEY_LEN, NULL, 0, "header", key))
		goto out;
	if (!HMAC(EVP_sha256(), key, 32, hdr, hdrlen, mac, &maclen) || maclen != 32)
		goto out;
	rc = 0;
out:
	OPENSSL_cleanse(key, sizeof(key));
	return rc;
}

/* ---------------------------------------------------------------- identities */

static int ids_push(struct age_identities *ids, const unsigned char secret[32], struct err *e)
{
	struct age_identity *v;
	size_t i;
	/* Grow by copying into fresh memory so no stale copy of a secret is
	 * left behind by realloc. */
	v = calloc(ids->n + 1, sizeof(*v));
	if (!v)
		return err_set(e, ERR_IO, "out of memory");
	for (i = 0; i < ids->n; i++)
		v[i] = ids->v[i];
	memcpy(v[ids->n].secret, secret, 32);
	if (x25519_public(secret, v[ids->n].pub)) {
		OPENSSL_cleanse(v, (ids->n + 1) * sizeof(*v));
		free(v);
		return err_set(e, ERR_INVALID, "invalid X25519 identity");
	}
	if (ids->v) {
		OPENSSL_cleanse(ids->v, ids->n * sizeof(*ids->v));
		free(ids->v);
	}
	ids->v = v;
	ids->n++;
	return 0;
}

int age_identities_parse(struct age_identities *ids, const char *text, size_t len,
                         const char *source, struct err *e)
{
	const char *p = text, *end = text + len;
	unsigned char secret[32];
	unsigned lineno = 0, found = 0;
	int rc = -1;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end, *ls = p;
		lineno++;
		p = nl ? nl + 1 : end;
		while (ls < le && (*ls == ' ' || *ls == '\t'))
			ls++;
		while (le > ls && (le[-1] == '\r' || le[-1] == ' ' || le[-1] == '\t'))
			le--;
		if (ls == le || *ls == '#')
			continue;
		if ((size_t)(le - ls) > 16 && !strncmp(ls, "AGE-SECRET-KEY-1", 16)) {
			if (bech32_decode(ls, (size_t)(le - ls), "age-secret-key-", secret, 32)) {
				err_set(e, ERR_INVALID,
				        "%s, line %u: malformed age identity (bad AGE-SECRET-KEY-1 "
				        "encoding)",
				        source, lineno);
				goto out;
			}
			if (ids_push(ids, secret, e)) {
				err_prefix(e, "%s, line %u", source, lineno);
				goto out;
			}
			found++;
			continue;
		}
		if ((size_t)(le - ls) > 14 && !strncmp(ls, "AGE-PLUGIN-", 11)) {
			err_set(e, ERR_INVALID,
			        "%s, line %u: age plugin identities are not supported (use an "
			        "X25519 identity made by age-keygen)",
			        source, lineno);
			goto out;
		}
		err_set(e, ERR_INVALID,
		        "%s, line %u: not an age identity (expected AGE-SECRET-KEY-1..., "
		        "a # comment or a blank line)",
		        source, lineno);
		goto out;
	}
	if (!found) {
		err_set(e, ERR_INVALID, "%s: no age identity (AGE-SECRET-KEY-1...) in it", source);
		goto out;
	}
	rc = 0;
out:
	OPENSSL_cleanse(secret, sizeof(secret));
	return rc;
}

int age_identities_load(struct age_identities *ids, const char *path, struct err *e)
{
	struct buf b = BUF_INIT;
	int rc = -1;
	if (file_read_all(path, AGE_IDENTITY_FILE_MAX, &b, e))
		err_prefix(e, "age identity file");
	else
		rc = age_identities_parse(ids, b.data ? b.data : "", b.len, path, e);
	buf_free_secure(&b);
	return rc;
}

void age_identities_free(struct age_identities *ids)
{
	if (!ids)
		return;
	if (ids->v) {
		OPENSSL_cleanse(ids->v, ids->n * sizeof(*ids->v));
		free(ids->v);
	}
	ids->v = NULL;
	ids->n = 0;
}

int age_identities_describe(const struct age_identities *ids, struct buf *out)
{
	char r[AGE_RECIPIENT_MAX];
	size_t i;
	for (i = 0; i < ids->n; i++) {
		age_recipient_format(ids->v[i].pub, r);
		if (buf_appendf(out, "%s%s", i ? ", " : "", r))
			return -1;
	}
	return 0;
}

int age_recipient_parse(const char *s, unsigned char pub[AGE_X25519_LEN], struct err *e)
{
	size_t len = strlen(s);
	if (len < 5 || strncmp(s, "age1", 4) || bech32_decode(s, len, "age", pub, AGE_X25519_LEN))
		return err_set(e, ERR_USAGE,
		               "\"%.100s\" is not an age X25519 recipient (expected age1... as "
		               "printed by age-keygen)",
		               s);
	return 0;
}

void age_recipient_format(const unsigned char pub[AGE_X25519_LEN], char out[AGE_RECIPIENT_MAX])
{
	bech32_encode("age", pub, AGE_X25519_LEN, 0, out, AGE_RECIPIENT_MAX);
}

int age_keygen(char identity_out[AGE_IDENTITY_MAX], char recipient_out[AGE_RECIPIENT_MAX],
               struct err *e)
{
	unsigned char secret[32], pub[32];
	int rc = -1;
	if (RAND_priv_bytes(secret, sizeof(secret)) != 1 || x25519_public(secret, pub)) {
		err_set(e, ERR_IO, "generating an age identity failed (OpenSSL)");
		goto out;
	}
	bech32_encode("age-secret-key-", secret, 32, 1, identity_out, AGE_IDENTITY_MAX);
	age_recipient_format(pub, recipient_out);
	rc = 0;
out:
	OPENSSL_cleanse(secret, sizeof(secret));
	return rc;
}

/* ---------------------------------------------------------------- armor */

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int looks_armored(const char *p, size_t n)
{
	size_t i = 0;
	while (i < n && is_space(p[i]))
		i++;
	return n - i >= strlen(AGE_ARMOR_BEGIN) &&
	       !memcmp(p + i, AGE_ARMOR_BEGIN, strlen(AGE_ARMOR_BEGIN));
}

/* Strict PEM (RFC 7468 figure 3), whitespace allowed around the block, LF or
 * CRLF line ends: every base64 line has 64 columns except the last one. */
static int dearmor(const char *p, size_t n, struct buf *out, struct err *e)
{
	const char *end = p + n, *line, *le;
	struct buf b64 = BUF_INIT;
	size_t outlen;
	int rc = -1, last_short = 0, saw_end = 0;
	while (p < end && is_space(*p))
		p++;
	while (end > p && is_space(end[-1]))
		end--;
	line = p;
	le = memchr(line, '\n', (size_t)(end - line));
	if (!le)
		goto bad;
	if ((size_t)(le - line) - (le > line && le[-1] == '\r') != strlen(AGE_ARMOR_BEGIN) ||
	    memcmp(line, AGE_ARMOR_BEGIN, strlen(AGE_ARMOR_BEGIN)))
		goto bad;
	p = le + 1;
	while (p < end) {
		size_t len;
		line = p;
		le = memchr(line, '\n', (size_t)(end - line));
		if (!le)
			le = end;
		p = le < end ? le + 1 : end;
		len = (size_t)(le - line);
		if (len && line[len - 1] == '\r')
			len--;
		if (len == strlen(AGE_ARMOR_END) && !memcmp(line, AGE_ARMOR_END, len)) {
			saw_end = 1;
			break;
		}
		if (last_short || len == 0 || len > 64)
			goto bad;
		if (len < 64)
			last_short = 1;
		if (buf_append(&b64, line, len)) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
	}
	if (!saw_end || p < end || b64.len == 0)
		goto bad;
	if (buf_reserve(out, age_b64_decoded_max(b64.len))) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (age_b64_decode(b64.data, b64.len, 1, (unsigned char *)out->data + out->len, &outlen))
		goto bad;
	out->len += outlen;
	rc = 0;
	goto out;
bad:
	err_set(e, ERR_INVALID,
	        "malformed age armor (expected a strict \"" AGE_ARMOR_BEGIN "\" block)");
out:
	buf_free(&b64);
	return rc;
}

static int armor(const unsigned char *bin, size_t n, struct buf *out)
{
	struct buf b64 = BUF_INIT;
	size_t i;
	int rc = -1;
	if (age_b64_encode(bin, n, 1, &b64))
		goto out;
	if (buf_appends(out, AGE_ARMOR_BEGIN "\n"))
		goto out;
	for (i = 0; i < b64.len; i += 64) {
		size_t l = b64.len - i < 64 ? b64.len - i : 64;
		if (buf_append(out, b64.data + i, l) || buf_append(out, "\n", 1))
			goto out;
	}
	if (buf_appends(out, AGE_ARMOR_END "\n"))
		goto out;
	rc = 0;
out:
	buf_free(&b64);
	return rc;
}

/* ---------------------------------------------------------------- header */

struct stanza {
	const char *args[8];
	size_t arglen[8];
	int nargs;
	unsigned char body[128]; /* bodies we care about are 32 bytes */
	size_t bodylen;
	int body_too_long;
};

/* Parse the header: version line, stanzas, MAC line.  *mac_covered is the
 * length that the MAC covers (through "---"), *hdrlen the whole header. */
static int parse_header(const unsigned char *in, size_t n, struct stanza **out, size_t *nst,
                        size_t *mac_covered, unsigned char mac[32], size_t *hdrlen, struct err *e)
{
	const char *p = (const char *)in, *end = (const char *)in + n, *le;
	struct stanza *st = NULL;
	size_t ns = 0, len;
	struct buf body = BUF_INIT;
	int rc = -1;
	le = memchr(p, '\n', (size_t)(end - p));
	if (!le || (size_t)(le - p) != strlen(AGE_VERSION_LINE) ||
	    memcmp(p, AGE_VERSION_LINE, strlen(AGE_VERSION_LINE))) {
		err_set(e, ERR_INVALID, "not an age file (no \"" AGE_VERSION_LINE "\" line)");
		goto out;
	}
	p = le + 1;
	for (;;) {
		le = memchr(p, '\n', (size_t)(end - p));
		if (!le) {
			err_set(e, ERR_INVALID, "truncated age header");
			goto out;
		}
		if (le - p >= 3 && !memcmp(p, "---", 3)) {
			size_t maclen;
			if (ns == 0) {
				err_set(e, ERR_INVALID, "age header has no recipient stanza");
				goto out;
			}
			*mac_covered = (size_t)(p + 3 - (const char *)in);
			if (le - p != 4 + 43 || p[3] != ' ' ||
			    age_b64_decode(p + 4, 43, 0, mac, &maclen) || maclen != 32) {
				err_set(e, ERR_INVALID, "malformed age header MAC line");
				goto out;
			}
			*hdrlen = (size_t)(le + 1 - (const char *)in);
			break;
		}
		if (le - p < 4 || memcmp(p, "-> ", 3)) {
			err_set(e, ERR_INVALID, "malformed age header line");
			goto out;
		}
		if (ns >= AGE_MAX_STANZAS) {
			err_set(e, ERR_INVALID, "age header has too many stanzas");
			goto out;
		}
		{
			struct stanza *nst_v = realloc(st, (ns + 1) * sizeof(*st));
			struct stanza *s;
			const char *a = p + 3;
			if (!nst_v) {
				err_set(e, ERR_IO, "out of memory");
				goto out;
			}
			st = nst_v;
			s = &st[ns++];
			memset(s, 0, sizeof(*s));
			/* Arguments: 1*VCHAR separated by single spaces. */
			while (a < le) {
				const char *ae = a;
				while (ae < le && *ae != ' ')
					ae++;
				if (ae == a || s->nargs >= 8) {
					err_set(e, ERR_INVALID, "malformed age stanza arguments");
					goto out;
				}
				for (const char *c = a; c < ae; c++)
					if (*c < 33 || *c > 126) {
						err_set(e, ERR_INVALID,
						        "malformed age stanza arguments");
						goto out;
					}
				s->args[s->nargs] = a;
				s->arglen[s->nargs++] = (size_t)(ae - a);
				a = ae < le ? ae + 1 : ae;
				if (ae < le && a == le) {
					err_set(e, ERR_INVALID, "malformed age stanza arguments");
					goto out;
				}
			}
			/* Body: full 64-column lines, then one shorter line. */
			buf_reset(&body);
			p = le + 1;
			for (;;) {
				le = memchr(p, '\n', (size_t)(end - p));
				if (!le) {
					err_set(e, ERR_INVALID, "truncated age header");
					goto out;
				}
				len = (size_t)(le - p);
				if (len > 64) {
					err_set(e, ERR_INVALID, "malformed age stanza body");
					goto out;
				}
				if (buf_append(&body, p, len)) {
					err_set(e, ERR_IO, "out of memory");
					goto out;
				}
				p = le + 1;
				if (len < 64)
					break;
			}
			if (age_b64_decoded_max(body.len) > sizeof(s->body)) {
				s->body_too_long = 1;
				/* Still check it is canonical base64. */
				unsigned char *tmp = malloc(age_b64_decoded_max(body.len));
				size_t tl;
				int bad = !tmp || age_b64_decode(body.data, body.len, 0, tmp, &tl);
				free(tmp);
				if (bad) {
					err_set(e, ERR_INVALID, "malformed age stanza body");
					goto out;
				}
			} else if (age_b64_decode(body.data ? body.data : "", body.len, 0, s->body,
			                          &s->bodylen)) {
				err_set(e, ERR_INVALID, "malformed age stanza body");
				goto out;
			}
		}
	}
	*out = st;
	*nst = ns;
	st = NULL;
	rc = 0;
out:
	free(st);
	buf_free(&body);
	return rc;
}

static int arg_is(const struct stanza *s, int i, const char *want)
{
	return i < s->nargs && s->arglen[i] == strlen(want) &&
	       !memcmp(s->args[i], want, s->arglen[i]);
}

/* 1: unwrapped; 0: not for this identity; -1: malformed stanza (e set). */
static int x25519_unwrap(const struct age_identity *id, const struct stanza *s,
                         unsigned char file_key[AGE_FILE_KEY_LEN], struct err *e)
{
	static const unsigned char zero_nonce[12];
	unsigned char share[33], shared[32], salt[64], wrap[32];
	size_t sharelen;
	int rc = -1;
	if (s->nargs != 2 || s->arglen[1] != 43 ||
	    age_b64_decode(s->args[1], 43, 0, share, &sharelen) || sharelen != 32) {
		err_set(e, ERR_INVALID, "malformed X25519 stanza in the age header");
		return -1;
	}
	if (s->body_too_long || s->bodylen != AGE_FILE_KEY_LEN + AGE_TAG) {
		err_set(e, ERR_INVALID, "malformed X25519 stanza body in the age header");
		return -1;
	}
	if (x25519(id->secret, share, shared)) {
		err_set(e, ERR_INVALID, "X25519 stanza with an invalid (low-order) share");
		goto out;
	}
	memcpy(salt, share, 32);
	memcpy(salt + 32, id->pub, 32);
	if (hkdf_sha256(shared, 32, salt, 64, AGE_X25519_INFO, wrap)) {
		err_set(e, ERR_IO, "HKDF failed (OpenSSL)");
		goto out;
	}
	rc = chacha_open(wrap, zero_nonce, s->body, s->bodylen, file_key) ? 0 : 1;
out:
	OPENSSL_cleanse(shared, sizeof(shared));
	OPENSSL_cleanse(wrap, sizeof(wrap));
	return rc;
}

static void stream_nonce(uint64_t counter, int last, unsigned char nonce[12])
{
	int i;
	memset(nonce, 0, 12);
	for (i = 0; i < 8; i++)
		nonce[10 - i] = (unsigned char)(counter >> (8 * i));
	nonce[11] = last ? 1 : 0;
}

static int payload_decrypt(const unsigned char file_key[AGE_FILE_KEY_LEN], const unsigned char *p,
                           size_t n, struct buf *out, struct err *e)
{
	unsigned char key[32], nonce[12];
	uint64_t counter = 0;
	int rc = -1;
	if (n < AGE_NONCE_LEN + AGE_TAG) {
		err_set(e, ERR_INVALID, "truncated age payload");
		return -1;
	}
	if (hkdf_sha256(file_key, AGE_FILE_KEY_LEN, p, AGE_NONCE_LEN, "payload", key)) {
		err_set(e, ERR_IO, "HKDF failed (OpenSSL)");
		goto out;
	}
	p += AGE_NONCE_LEN;
	n -= AGE_NONCE_LEN;
	/* One allocation for the whole plaintext: growing by realloc would leave
	 * copies of it in freed memory. */
	if (buf_reserve(out, n)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	for (;;) {
		size_t clen = n > AGE_CHUNK + AGE_TAG ? AGE_CHUNK + AGE_TAG : n;
		int last = clen == n;
		if (clen < AGE_TAG || (last && clen == AGE_TAG && counter > 0)) {
			err_set(e, ERR_INVALID, "truncated or malformed age payload");
			goto out;
		}
		if (buf_reserve(out, clen)) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		stream_nonce(counter, last, nonce);
		if (chacha_open(key, nonce, p, clen, (unsigned char *)out->data + out->len)) {
			err_set(e, ERR_INVALID,
			        "age payload failed authentication (corrupt or truncated file)");
			goto out;
		}
		out->len += clen - AGE_TAG;
		out->data[out->len] = '\0';
		p += clen;
		n -= clen;
		counter++;
		if (last)
			break;
	}
	rc = 0;
out:
	OPENSSL_cleanse(key, sizeof(key));
	return rc;
}

int age_decrypt(const struct age_identities *ids, const void *in, size_t inlen, struct buf *out,
                struct err *e)
{
	struct buf bin = BUF_INIT;
	const unsigned char *data = in;
	struct stanza *st = NULL;
	size_t nst = 0, covered = 0, hdrlen = 0, i, j, nx = 0;
	unsigned char mac[32], want[32], file_key[AGE_FILE_KEY_LEN];
	int rc = -1, have_key = 0, other = 0;
	if (looks_armored(in, inlen)) {
		if (dearmor(in, inlen, &bin, e))
			goto out;
		data = (const unsigned char *)bin.data;
		inlen = bin.len;
	}
	if (parse_header(data, inlen, &st, &nst, &covered, mac, &hdrlen, e))
		goto out;
	for (i = 0; i < nst; i++) {
		if (arg_is(&st[i], 0, "scrypt")) {
			err_set(e, ERR_INVALID,
			        "passphrase-encrypted (scrypt) age files are not supported");
			goto out;
		}
		if (arg_is(&st[i], 0, "X25519"))
			nx++;
		else
			other++;
	}
	for (i = 0; i < nst && !have_key; i++) {
		if (!arg_is(&st[i], 0, "X25519"))
			continue;
		for (j = 0; j < (ids ? ids->n : 0) && !have_key; j++) {
			int r = x25519_unwrap(&ids->v[j], &st[i], file_key, e);
			if (r < 0)
				goto out;
			have_key = r;
		}
	}
	if (!have_key) {
		err_set(e, ERR_AUTH,
		        "no age identity matches (the file has %zu X25519 recipient stanza%s%s; "
		        "%zu identit%s tried)",
		        nx, nx == 1 ? "" : "s", other ? " and stanzas of other types" : "",
		        ids ? ids->n : 0, ids && ids->n == 1 ? "y" : "ies");
		goto out;
	}
	if (header_mac(file_key, data, covered, want)) {
		err_set(e, ERR_IO, "HMAC failed (OpenSSL)");
		goto out;
	}
	if (CRYPTO_memcmp(want, mac, 32)) {
		err_set(e, ERR_INVALID, "age header MAC mismatch (the file was modified)");
		goto out;
	}
	if (payload_decrypt(file_key, data + hdrlen, inlen - hdrlen, out, e))
		goto out;
	rc = 0;
out:
	OPENSSL_cleanse(file_key, sizeof(file_key));
	free(st);
	buf_free_secure(&bin);
	return rc;
}

/* ---------------------------------------------------------------- encrypt */

static int add_stanza(struct buf *hdr, const unsigned char recipient[32],
                      const unsigned char file_key[AGE_FILE_KEY_LEN], struct err *e)
{
	static const unsigned char zero_nonce[12];
	unsigned char eph[32], share[32], shared[32], salt[64], wrap[32], body[32];
	struct buf b = BUF_INIT;
	int rc = -1;
	if (RAND_priv_bytes(eph, 32) != 1 || x25519_public(eph, share)) {
		err_set(e, ERR_IO, "generating an ephemeral X25519 key failed (OpenSSL)");
		goto out;
	}
	if (x25519(eph, recipient, shared)) {
		err_set(e, ERR_USAGE, "invalid age recipient (low-order X25519 point)");
		goto out;
	}
	memcpy(salt, share, 32);
	memcpy(salt + 32, recipient, 32);
	if (hkdf_sha256(shared, 32, salt, 64, AGE_X25519_INFO, wrap) ||
	    chacha_seal(wrap, zero_nonce, file_key, AGE_FILE_KEY_LEN, body)) {
		err_set(e, ERR_IO, "wrapping the age file key failed (OpenSSL)");
		goto out;
	}
	if (buf_appends(hdr, "-> X25519 ") || age_b64_encode(share, 32, 0, hdr) ||
	    buf_appends(hdr, "\n") || age_b64_encode(body, 32, 0, &b) ||
	    buf_append(hdr, b.data, b.len) || buf_appends(hdr, "\n")) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	rc = 0;
out:
	OPENSSL_cleanse(eph, sizeof(eph));
	OPENSSL_cleanse(shared, sizeof(shared));
	OPENSSL_cleanse(wrap, sizeof(wrap));
	buf_free(&b);
	return rc;
}

int age_encrypt(const char *const *recipients, size_t nrecipients, const void *in, size_t inlen,
                int do_armor, struct buf *out, struct err *e)
{
	unsigned char file_key[AGE_FILE_KEY_LEN], mac[32], pkey[32], nonce[12],
	        pnonce[AGE_NONCE_LEN];
	unsigned char pub[32];
	struct buf bin = BUF_INIT;
	const unsigned char *p = in;
	size_t i, left = inlen;
	uint64_t counter = 0;
	int rc = -1;
	if (nrecipients == 0)
		return err_set(e, ERR_USAGE, "no age recipient given");
	if (RAND_priv_bytes(file_key, sizeof(file_key)) != 1 ||
	    RAND_bytes(pnonce, sizeof(pnonce)) != 1) {
		err_set(e, ERR_IO, "random number generator failed (OpenSSL)");
		goto out;
	}
	if (buf_appends(&bin, AGE_VERSION_LINE "\n"))
		goto oom;
	for (i = 0; i < nrecipients; i++) {
		if (age_recipient_parse(recipients[i], pub, e) ||
		    add_stanza(&bin, pub, file_key, e))
			goto out;
	}
	if (buf_appends(&bin, "---"))
		goto oom;
	if (header_mac(file_key, bin.data, bin.len, mac)) {
		err_set(e, ERR_IO, "HMAC failed (OpenSSL)");
		goto out;
	}
	if (buf_appends(&bin, " ") || age_b64_encode(mac, 32, 0, &bin) || buf_appends(&bin, "\n"))
		goto oom;
	if (hkdf_sha256(file_key, AGE_FILE_KEY_LEN, pnonce, AGE_NONCE_LEN, "payload", pkey)) {
		err_set(e, ERR_IO, "HKDF failed (OpenSSL)");
		goto out;
	}
	if (buf_append(&bin, pnonce, AGE_NONCE_LEN))
		goto oom;
	do {
		size_t clen = left > AGE_CHUNK ? AGE_CHUNK : left;
		int last = clen == left;
		if (buf_reserve(&bin, clen + AGE_TAG))
			goto oom;
		stream_nonce(counter, last, nonce);
		if (chacha_seal(pkey, nonce, p, clen, (unsigned char *)bin.data + bin.len)) {
			err_set(e, ERR_IO, "ChaCha20-Poly1305 failed (OpenSSL)");
			goto out;
		}
		bin.len += clen + AGE_TAG;
		bin.data[bin.len] = '\0';
		p += clen;
		left -= clen;
		counter++;
	} while (left > 0);
	if (do_armor) {
		if (armor((const unsigned char *)bin.data, bin.len, out))
			goto oom;
	} else if (buf_append(out, bin.data, bin.len)) {
		goto oom;
	}
	rc = 0;
	goto out;
oom:
	err_set(e, ERR_IO, "out of memory");
out:
	OPENSSL_cleanse(file_key, sizeof(file_key));
	OPENSSL_cleanse(pkey, sizeof(pkey));
	buf_free(&bin);
	return rc;
}
