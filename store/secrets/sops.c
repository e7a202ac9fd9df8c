/* SOPS decryption, MAC check and encryption.  See sops.h and
 * tests/data/sops/README.md for the algorithm. */
#include "store/secrets/sops.h"

#include "common/child.h"
#include "common/file.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/timefmt.h"
#include "store/secrets/age.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define SOPS_FILE_MAX  (16u << 20)
#define SOPS_MAX_DEPTH 64
#define SOPS_IV_LEN    32
#define SOPS_TAG_LEN   16
#define GPG_OUT_MAX    (1u << 20)
#define GPG_ERR_MAX    (64u << 10)
#define DEFAULT_SUFFIX "_unencrypted"
#define ENC_PREFIX     "ENC[AES256_GCM,data:"
/* ToBytes() of a number: Go's 'f' format can be long ("0.", 323 zeros and
 * "5" for 5e-324; 309 digits and a sign for -1.79e308). */
#define CANON_MAX 400

enum rule_kind { RULE_UNENC_SUFFIX, RULE_ENC_SUFFIX, RULE_UNENC_REGEX, RULE_ENC_REGEX };

struct sops_entry {
	char *id;  /* age recipient or PGP fingerprint */
	char *enc; /* armored age file / PGP message */
};

struct sops_file {
	char *name;
	char *text; /* the file as read (for comment lines) */
	size_t textlen;
	yaml_document_t *docs;
	size_t ndocs;
	struct sops_entry *age, *pgp;
	size_t nage, npgp;
	char *age_list, *pgp_list, *other_keys;
	char *lastmodified;
	char *mac; /* NULL when absent */
	enum rule_kind rule;
	char *rule_arg;
	pcre2_code *re;
	int mac_only_encrypted;
};

/* ---------------------------------------------------------------- small helpers */

static char *xstrndup(const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (p) {
		memcpy(p, s, n);
		p[n] = '\0';
	}
	return p;
}

static void free_secret(char *s, size_t n)
{
	if (s) {
		OPENSSL_cleanse(s, n);
		free(s);
	}
}

static const char *scalar(const yaml_node_t *n)
{
	return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static yaml_node_t *map_get(yaml_document_t *d, yaml_node_t *map, const char *key)
{
	yaml_node_pair_t *p;
	if (!map || map->type != YAML_MAPPING_NODE)
		return NULL;
	for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		const char *k = scalar(yaml_document_get_node(d, p->key));
		if (k && !strcmp(k, key))
			return yaml_document_get_node(d, p->value);
	}
	return NULL;
}

static int append_list(char **list, const char *item)
{
	size_t old = *list ? strlen(*list) : 0, n = strlen(item);
	char *p = realloc(*list, old + n + 3);
	if (!p)
		return -1;
	if (old) {
		memcpy(p + old, ", ", 2);
		old += 2;
	}
	memcpy(p + old, item, n + 1);
	*list = p;
	return 0;
}

/* ---------------------------------------------------------------- YAML scalars */

enum kind { K_NULL, K_BOOL, K_INT, K_FLOAT, K_STR };

/* Go strconv.ParseInt(s, 0, 64) (underscores already removed). */
static int go_parse_int(const char *s, long long *out)
{
	int neg = 0, base = 10;
	unsigned long long v = 0, lim;
	const char *p = s;
	if (*p == '+' || *p == '-')
		neg = *p++ == '-';
	if (!*p)
		return -1;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
		base = 16, p += 2;
	else if (p[0] == '0' && (p[1] == 'o' || p[1] == 'O'))
		base = 8, p += 2;
	else if (p[0] == '0' && (p[1] == 'b' || p[1] == 'B'))
		base = 2, p += 2;
	else if (p[0] == '0' && p[1])
		base = 8, p += 1;
	if (!*p)
		return -1;
	lim = neg ? (unsigned long long)LLONG_MAX + 1 : (unsigned long long)LLONG_MAX;
	for (; *p; p++) {
		int d;
		if (*p >= '0' && *p <= '9')
			d = *p - '0';
		else if (*p >= 'a' && *p <= 'f')
			d = *p - 'a' + 10;
		else if (*p >= 'A' && *p <= 'F')
			d = *p - 'A' + 10;
		else
			return -1;
		if (d >= base)
			return -1;
		if (v > (lim - (unsigned)d) / (unsigned)base)
			return -1;
		v = v * (unsigned)base + (unsigned)d;
	}
	*out = neg ? (long long)(0 - v) : (long long)v;
	return 0;
}

/* ^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$ (go-yaml's yamlStyleFloat) */
static int yaml_style_float(const char *p)
{
	int digits = 0;
	if (*p == '+' || *p == '-')
		p++;
	if (*p == '.') {
		p++;
		while (isdigit((unsigned char)*p))
			p++, digits++;
		if (!digits)
			return 0;
	} else {
		while (isdigit((unsigned char)*p))
			p++, digits++;
		if (!digits)
			return 0;
		if (*p == '.') {
			p++;
			while (isdigit((unsigned char)*p))
				p++;
		}
	}
	if (*p == 'e' || *p == 'E') {
		p++;
		digits = 0;
		if (*p == '+' || *p == '-')
			p++;
		while (isdigit((unsigned char)*p))
			p++, digits++;
		if (!digits)
			return 0;
	}
	return *p == '\0';
}

/* Go strconv.FormatFloat(f, 'f', -1, 64): shortest digits that round-trip,
 * never an exponent. */
static void go_format_float(double f, char *out, size_t cap)
{
	char tmp[40], digits[24];
	int prec, exp10, nd = 0, pos, i;
	size_t o = 0;
	const char *p;
	if (isnan(f)) {
		snprintf(out, cap, "NaN");
		return;
	}
	if (isinf(f)) {
		snprintf(out, cap, "%sInf", f < 0 ? "-" : "+");
		return;
	}
	if (f == 0) {
		snprintf(out, cap, "%s0", signbit(f) ? "-" : "");
		return;
	}
	for (prec = 1; prec <= 17; prec++) {
		snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, f);
		if (strtod(tmp, NULL) == f)
			break;
	}
	p = tmp;
	if (*p == '-') {
		if (o + 1 < cap)
			out[o++] = '-';
		p++;
	}
	for (; *p && *p != 'e'; p++)
		if (isdigit((unsigned char)*p))
			digits[nd++] = *p;
	exp10 = *p == 'e' ? atoi(p + 1) : 0;
	while (nd > 1 && digits[nd - 1] == '0')
		nd--;
	pos = exp10 + 1; /* digits before the decimal point */
	if (pos <= 0) {
		if (o + 2 < cap) {
			out[o++] = '0';
			out[o++] = '.';
		}
		for (i = 0; i < -pos && o + 1 < cap; i++)
			out[o++] = '0';
		for (i = 0; i < nd && o + 1 < cap; i++)
			out[o++] = digits[i];
	} else if (pos >= nd) {
		for (i = 0; i < nd && o + 1 < cap; i++)
			out[o++] = digits[i];
		for (i = nd; i < pos && o + 1 < cap; i++)
			out[o++] = '0';
	} else {
		for (i = 0; i < nd && o + 2 < cap; i++) {
			if (i == pos)
				out[o++] = '.';
			out[o++] = digits[i];
		}
	}
	out[o] = '\0';
}

/* How go-yaml v3 resolves a plain, untagged scalar when sops decodes it into
 * interface{} (timestamps stay strings).  `canon` gets ToBytes() of the value
 * for bool/int/float. */
static enum kind resolve_plain(const char *s, char *canon, size_t cap)
{
	static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
	static const char *const trues[] = {"true", "True", "TRUE"};
	static const char *const falses[] = {"false", "False", "FALSE"};
	static const char *const pinf[] = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"};
	static const char *const ninf[] = {"-.inf", "-.Inf", "-.INF"};
	static const char *const nans[] = {".nan", ".NaN", ".NAN"};
	char plain[128];
	size_t i, j;
	long long iv;
	for (i = 0; i < sizeof(nulls) / sizeof(*nulls); i++)
		if (!strcmp(s, nulls[i]))
			return K_NULL;
	for (i = 0; i < 3; i++) {
		if (!strcmp(s, trues[i])) {
			snprintf(canon, cap, "True");
			return K_BOOL;
		}
		if (!strcmp(s, falses[i])) {
			snprintf(canon, cap, "False");
			return K_BOOL;
		}
		if (!strcmp(s, ninf[i]) || !strcmp(s, nans[i])) {
			snprintf(canon, cap, "%s", s[0] == '-' ? "-Inf" : "NaN");
			return K_FLOAT;
		}
	}
	for (i = 0; i < 6; i++)
		if (!strcmp(s, pinf[i])) {
			snprintf(canon, cap, "+Inf");
			return K_FLOAT;
		}
	if (!(isdigit((unsigned char)s[0]) || s[0] == '+' || s[0] == '-' || s[0] == '.'))
		return K_STR;
	/* Timestamps (YYYY-M-D...) stay strings. */
	if (isdigit((unsigned char)s[0]) && isdigit((unsigned char)s[1]) &&
	    isdigit((unsigned char)s[2]) && isdigit((unsigned char)s[3]) && s[4] == '-')
		return K_STR;
	for (i = j = 0; s[i] && j + 1 < sizeof(plain); i++)
		if (s[i] != '_')
			plain[j++] = s[i];
	if (s[i])
		return K_STR;
	plain[j] = '\0';
	if (!go_parse_int(plain, &iv)) {
		snprintf(canon, cap, "%lld", iv);
		return K_INT;
	}
	if (yaml_style_float(plain)) {
		go_format_float(strtod(plain, NULL), canon, cap);
		return K_FLOAT;
	}
	return K_STR;
}

/* ---------------------------------------------------------------- AES-GCM values */

static int gcm(int enc, const unsigned char key[32], const unsigned char *iv, size_t ivlen,
               const char *aad, const unsigned char *in, size_t inlen, unsigned char *out,
               unsigned char tag[SOPS_TAG_LEN])
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int n, rc = -1;
	if (!c || EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, (int)ivlen, NULL) != 1 ||
	    EVP_CipherInit_ex(c, NULL, NULL, key, iv, enc) != 1)
		goto out;
	if (*aad &&
	    EVP_CipherUpdate(c, NULL, &n, (const unsigned char *)aad, (int)strlen(aad)) != 1)
		goto out;
	if (inlen && EVP_CipherUpdate(c, out, &n, in, (int)inlen) != 1)
		goto out;
	if (!enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, SOPS_TAG_LEN, tag) != 1)
		goto out;
	if (EVP_CipherFinal_ex(c, out + inlen, &n) != 1)
		goto out;
	if (enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, SOPS_TAG_LEN, tag) != 1)
		goto out;
	rc = 0;
out:
	if (rc && !enc && inlen)
		OPENSSL_cleanse(out, inlen);
	EVP_CIPHER_CTX_free(c);
	return rc;
}

static const char *const enc_types[] = {"str", "int", "float", "bool", "bytes", "time", "comment"};

/* 1 when s looks like ENC[AES256_GCM,...] at all. */
static int is_enc(const char *s)
{
	return !strncmp(s, ENC_PREFIX, strlen(ENC_PREFIX));
}

/* Decrypt one ENC[...] string.  *out is malloc'd, NUL-terminated (secret).
 * Returns 0, or -1 with a message that never contains the value. */
static int enc_decrypt(const char *s, const unsigned char key[32], const char *aad, char **out,
                       size_t *outlen, char type[8], struct err *e)
{
	const char *data, *iv, *tag, *ty, *end;
	unsigned char ivb[72], tagb[20], *ct = NULL;
	size_t ivlen, taglen, ctlen, slen = strlen(s), i;
	char *pt = NULL;
	int rc = -1;
	if (!is_enc(s) || slen < 2 || s[slen - 1] != ']')
		goto malformed;
	data = s + strlen(ENC_PREFIX);
	iv = strstr(data, ",iv:");
	tag = iv ? strstr(iv, ",tag:") : NULL;
	ty = tag ? strstr(tag, ",type:") : NULL;
	end = s + slen - 1;
	if (!ty || iv == data)
		goto malformed;
	if ((size_t)(ty + 6 - s) >= slen || (size_t)(end - (ty + 6)) >= 8 || end == ty + 6)
		goto malformed;
	memset(type, 0, 8);
	memcpy(type, ty + 6, (size_t)(end - (ty + 6)));
	for (i = 0; i < sizeof(enc_types) / sizeof(*enc_types); i++)
		if (!strcmp(type, enc_types[i]))
			break;
	if (i == sizeof(enc_types) / sizeof(*enc_types)) {
		err_set(e, ERR_INVALID, "unknown value type in ENC[...]");
		goto out;
	}
	if ((size_t)(tag - (iv + 4)) > 96 || (size_t)(ty - (tag + 5)) != 24)
		goto malformed;
	if (age_b64_decode(iv + 4, (size_t)(tag - (iv + 4)), 1, ivb, &ivlen) || ivlen == 0 ||
	    age_b64_decode(tag + 5, 24, 1, tagb, &taglen) || taglen != SOPS_TAG_LEN)
		goto malformed;
	ct = malloc(age_b64_decoded_max((size_t)(iv - data)));
	if (!ct) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (age_b64_decode(data, (size_t)(iv - data), 1, ct, &ctlen))
		goto malformed;
	pt = malloc(ctlen + 1);
	if (!pt) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (gcm(0, key, ivb, ivlen, aad, ct, ctlen, (unsigned char *)pt, tagb)) {
		err_set(e, ERR_INVALID,
		        "does not decrypt (authentication failed: wrong data key, or the value, "
		        "its IV, tag or key path was modified)");
		goto out;
	}
	pt[ctlen] = '\0';
	*out = pt;
	*outlen = ctlen;
	pt = NULL;
	rc = 0;
	goto out;
malformed:
	err_set(e, ERR_INVALID, "malformed ENC[AES256_GCM,data:...,iv:...,tag:...,type:...] value");
out:
	free_secret(pt, pt ? ctlen : 0);
	free(ct);
	return rc;
}

static int enc_encrypt(const unsigned char key[32], const char *aad, const char *pt, size_t ptlen,
                       const char *type, struct buf *out, struct err *e)
{
	unsigned char iv[SOPS_IV_LEN], tag[SOPS_TAG_LEN], *ct = malloc(ptlen + 16);
	int rc = -1;
	if (!ct)
		return err_set(e, ERR_IO, "out of memory");
	if (RAND_bytes(iv, sizeof(iv)) != 1 ||
	    gcm(1, key, iv, sizeof(iv), aad, (const unsigned char *)pt, ptlen, ct, tag)) {
		err_set(e, ERR_IO, "AES-256-GCM failed (OpenSSL)");
		goto out;
	}
	if (buf_appends(out, ENC_PREFIX) || age_b64_encode(ct, ptlen, 1, out) ||
	    buf_appends(out, ",iv:") || age_b64_encode(iv, sizeof(iv), 1, out) ||
	    buf_appends(out, ",tag:") || age_b64_encode(tag, sizeof(tag), 1, out) ||
	    buf_appendf(out, ",type:%s]", type)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	rc = 0;
out:
	OPENSSL_cleanse(ct, ptlen + 16);
	free(ct);
	return rc;
}

/* Go strconv.ParseBool. */
static int go_parse_bool(const char *s, int *v)
{
	static const char *const t[] = {"1", "t", "T", "TRUE", "true", "True"};
	static const char *const f[] = {"0", "f", "F", "FALSE", "false", "False"};
	size_t i;
	for (i = 0; i < 6; i++) {
		if (!strcmp(s, t[i]))
			return *v = 1, 0;
		if (!strcmp(s, f[i]))
			return *v = 0, 0;
	}
	return -1;
}

/* ToBytes() of a decrypted value of the given type, into canon (or NULL =
 * the raw bytes).  -1 when the plaintext is not a valid value of its type. */
static int typed_canon(const char *type, const char *pt, char *canon, size_t cap, int *use_canon)
{
	*use_canon = 0;
	if (!strcmp(type, "int")) {
		const char *p = pt;
		long long v;
		char *end;
		if (*p == '+' || *p == '-')
			p++;
		if (!isdigit((unsigned char)*p))
			return -1;
		for (; *p; p++)
			if (!isdigit((unsigned char)*p))
				return -1;
		errno = 0;
		v = strtoll(pt, &end, 10);
		if (errno)
			return -1;
		snprintf(canon, cap, "%lld", v);
		*use_canon = 1;
	} else if (!strcmp(type, "float")) {
		char *end;
		double v;
		if (!*pt)
			return -1;
		v = strtod(pt, &end);
		if (*end)
			return -1;
		go_format_float(v, canon, cap);
		*use_canon = 1;
	} else if (!strcmp(type, "bool")) {
		int b;
		if (go_parse_bool(pt, &b))
			return -1;
		snprintf(canon, cap, "%s", b ? "True" : "False");
		*use_canon = 1;
	}
	return 0;
}

/* ---------------------------------------------------------------- rules */

static int should_encrypt(const struct sops_file *f, char *const *path, const size_t *plen,
                          int depth)
{
	int i, enc;
	size_t al = f->rule_arg ? strlen(f->rule_arg) : 0;
	switch (f->rule) {
	case RULE_UNENC_SUFFIX:
	case RULE_ENC_SUFFIX:
		enc = f->rule == RULE_UNENC_SUFFIX;
		for (i = 0; i < depth; i++)
			if (plen[i] >= al && !memcmp(path[i] + plen[i] - al, f->rule_arg, al))
				return !enc;
		return enc;
	case RULE_UNENC_REGEX:
	case RULE_ENC_REGEX: {
		pcre2_match_data *md = pcre2_match_data_create_from_pattern(f->re, NULL);
		int hit = 0;
		enc = f->rule == RULE_UNENC_REGEX;
		for (i = 0; md && i < depth && !hit; i++)
			if (pcre2_match(f->re, (PCRE2_SPTR)path[i], plen[i], 0, 0, md, NULL) >= 0)
				hit = 1;
		pcre2_match_data_free(md);
		return hit ? !enc : enc;
	}
	}
	return 1;
}

/* ---------------------------------------------------------------- parse */

static int meta_str(yaml_document_t *d, yaml_node_t *n, const char *what, char **out, struct err *e)
{
	const char *s = scalar(n);
	if (!s)
		return err_set(e, ERR_INVALID, "sops.%s is not a string", what);
	free(*out);
	*out = strdup(s);
	(void)d;
	return *out ? 0 : err_set(e, ERR_IO, "out of memory");
}

static int meta_entries(yaml_document_t *d, yaml_node_t *seq, const char *what, const char *idkey,
                        struct sops_entry **v, size_t *n, char **list, struct err *e)
{
	yaml_node_item_t *it;
	if (!seq)
		return 0;
	if (seq->type == YAML_SCALAR_NODE && !*seq->data.scalar.value)
		return 0;
	if (seq->type != YAML_SEQUENCE_NODE)
		return err_set(e, ERR_INVALID, "sops.%s is not a list", what);
	for (it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
		yaml_node_t *m = yaml_document_get_node(d, *it);
		const char *id = scalar(map_get(d, m, idkey));
		const char *enc = scalar(map_get(d, m, "enc"));
		struct sops_entry *nv;
		if (!id || !enc)
			return err_set(e, ERR_INVALID, "sops.%s entry without %s and enc", what,
			               idkey);
		nv = realloc(*v, (*n + 1) * sizeof(**v));
		if (!nv)
			return err_set(e, ERR_IO, "out of memory");
		*v = nv;
		nv[*n].id = strdup(id);
		nv[*n].enc = strdup(enc);
		(*n)++;
		if (!nv[*n - 1].id || !nv[*n - 1].enc || append_list(list, id))
			return err_set(e, ERR_IO, "out of memory");
	}
	return 0;
}

static int seq_nonempty(yaml_node_t *n)
{
	return n && n->type == YAML_SEQUENCE_NODE &&
	       n->data.sequence.items.top > n->data.sequence.items.start;
}

static int parse_keys(struct sops_file *f, yaml_document_t *d, yaml_node_t *holder, struct err *e)
{
	static const char *const others[] = {"kms", "gcp_kms", "azure_kv", "hc_vault"};
	size_t i;
	if (meta_entries(d, map_get(d, holder, "age"), "age", "recipient", &f->age, &f->nage,
	                 &f->age_list, e) ||
	    meta_entries(d, map_get(d, holder, "pgp"), "pgp", "fp", &f->pgp, &f->npgp, &f->pgp_list,
	                 e))
		return -1;
	for (i = 0; i < sizeof(others) / sizeof(*others); i++)
		if (seq_nonempty(map_get(d, holder, others[i])) &&
		    append_list(&f->other_keys, others[i]))
			return err_set(e, ERR_IO, "out of memory");
	return 0;
}

static int parse_meta(struct sops_file *f, struct err *e)
{
	static const char *const rules[] = {"unencrypted_suffix", "encrypted_suffix",
	                                    "unencrypted_regex", "encrypted_regex"};
	yaml_document_t *d = &f->docs[0];
	yaml_node_t *root = yaml_document_get_root_node(d), *m, *n;
	size_t i, nrules = 0;
	if (!root || root->type != YAML_MAPPING_NODE)
		return err_set(e, ERR_INVALID, "not a SOPS file: the top level is not a map");
	m = map_get(d, root, "sops");
	if (!m)
		return err_set(e, ERR_INVALID,
		               "not a SOPS file: no `sops` metadata (is it encrypted at all?)");
	if (m->type != YAML_MAPPING_NODE)
		return err_set(e, ERR_INVALID, "the `sops` metadata is not a map");
	if (parse_keys(f, d, m, e))
		return -1;
	n = map_get(d, m, "key_groups");
	if (n && n->type == YAML_SEQUENCE_NODE) {
		size_t groups = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
		if (groups > 1)
			return err_set(
			        e, ERR_INVALID,
			        "uses %zu Shamir key groups, which imgstore does not support "
			        "(re-encrypt it with a single key group)",
			        groups);
		if (groups == 1 &&
		    parse_keys(f, d, yaml_document_get_node(d, *n->data.sequence.items.start), e))
			return -1;
	}
	n = map_get(d, m, "lastmodified");
	if (!n || meta_str(d, n, "lastmodified", &f->lastmodified, e))
		return n ? -1 : err_set(e, ERR_INVALID, "sops.lastmodified is missing");
	n = map_get(d, m, "mac");
	if (n && meta_str(d, n, "mac", &f->mac, e))
		return -1;
	for (i = 0; i < 4; i++) {
		const char *s = scalar(map_get(d, m, rules[i]));
		if (s && *s) {
			nrules++;
			f->rule = (enum rule_kind)i;
			free(f->rule_arg);
			if (!(f->rule_arg = strdup(s)))
				return err_set(e, ERR_IO, "out of memory");
		}
	}
	for (i = 0; i < 2; i++) {
		const char *k = i ? "encrypted_comment_regex" : "unencrypted_comment_regex";
		const char *s = scalar(map_get(d, m, k));
		if (s && *s)
			return err_set(e, ERR_INVALID, "sops.%s is not supported", k);
	}
	if (nrules > 1)
		return err_set(e, ERR_INVALID,
		               "sets more than one of unencrypted_suffix, encrypted_suffix, "
		               "unencrypted_regex, encrypted_regex (sops refuses that too)");
	if (nrules == 0) {
		f->rule = RULE_UNENC_SUFFIX;
		if (!(f->rule_arg = strdup(DEFAULT_SUFFIX)))
			return err_set(e, ERR_IO, "out of memory");
	}
	if (f->rule == RULE_UNENC_REGEX || f->rule == RULE_ENC_REGEX) {
		int ec;
		PCRE2_SIZE off;
		f->re = pcre2_compile((PCRE2_SPTR)f->rule_arg, PCRE2_ZERO_TERMINATED, PCRE2_UTF,
		                      &ec, &off, NULL);
		if (!f->re)
			return err_set(e, ERR_INVALID, "sops.%s: invalid regular expression",
			               rules[f->rule]);
	}
	n = map_get(d, m, "mac_only_encrypted");
	if (n && scalar(n)) {
		char canon[8];
		f->mac_only_encrypted = resolve_plain(scalar(n), canon, sizeof(canon)) == K_BOOL &&
		                        !strcmp(canon, "True");
	}
	if (!f->age_list && !(f->age_list = strdup("")))
		return err_set(e, ERR_IO, "out of memory");
	if (!f->pgp_list && !(f->pgp_list = strdup("")))
		return err_set(e, ERR_IO, "out of memory");
	return 0;
}

int sops_parse(const char *text, size_t len, const char *name, struct sops_file **out,
               struct err *e)
{
	struct sops_file *f = calloc(1, sizeof(*f));
	yaml_parser_t parser;
	int parser_ok = 0, rc = -1;
	*out = NULL;
	if (!f || !(f->name = strdup(name ? name : "(input)")) ||
	    !(f->text = xstrndup(text, len))) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	f->textlen = len;
	if (!yaml_parser_initialize(&parser)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	parser_ok = 1;
	yaml_parser_set_input_string(&parser, (const unsigned char *)f->text, len);
	for (;;) {
		yaml_document_t doc;
		yaml_document_t *nd;
		if (!yaml_parser_load(&parser, &doc)) {
			err_set(e, ERR_INVALID, "line %zu column %zu: invalid YAML: %s",
			        parser.problem_mark.line + 1, parser.problem_mark.column + 1,
			        parser.problem ? parser.problem : "syntax error");
			goto out;
		}
		if (!yaml_document_get_root_node(&doc)) {
			yaml_document_delete(&doc);
			break;
		}
		nd = realloc(f->docs, (f->ndocs + 1) * sizeof(*nd));
		if (!nd) {
			yaml_document_delete(&doc);
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		f->docs = nd;
		f->docs[f->ndocs++] = doc;
	}
	if (!f->ndocs) {
		err_set(e, ERR_INVALID, "empty file");
		goto out;
	}
	if (parse_meta(f, e))
		goto out;
	*out = f;
	f = NULL;
	rc = 0;
out:
	if (parser_ok)
		yaml_parser_delete(&parser);
	if (rc && e)
		err_prefix(e, "%s", name ? name : "(input)");
	sops_file_free(f);
	return rc;
}

int sops_load(const char *path, struct sops_file **out, struct err *e)
{
	struct buf b = BUF_INIT;
	int rc;
	*out = NULL;
	if (file_read_all(path, SOPS_FILE_MAX, &b, e))
		return -1;
	rc = sops_parse(b.data, b.len, path, out, e);
	buf_free(&b);
	return rc;
}

void sops_file_free(struct sops_file *f)
{
	size_t i;
	if (!f)
		return;
	for (i = 0; i < f->ndocs; i++)
		yaml_document_delete(&f->docs[i]);
	free(f->docs);
	for (i = 0; i < f->nage; i++) {
		free(f->age[i].id);
		free(f->age[i].enc);
	}
	for (i = 0; i < f->npgp; i++) {
		free(f->pgp[i].id);
		free(f->pgp[i].enc);
	}
	free(f->age);
	free(f->pgp);
	free(f->age_list);
	free(f->pgp_list);
	free(f->other_keys);
	free(f->lastmodified);
	free(f->mac);
	free(f->rule_arg);
	pcre2_code_free(f->re);
	free(f->name);
	free(f->text);
	free(f);
}

const char *sops_file_age_recipients(const struct sops_file *f)
{
	return f->age_list ? f->age_list : "";
}

const char *sops_file_pgp_fingerprints(const struct sops_file *f)
{
	return f->pgp_list ? f->pgp_list : "";
}

const char *sops_file_lastmodified(const struct sops_file *f)
{
	return f->lastmodified;
}

/* ---------------------------------------------------------------- gpg */

static const char *gpg_program(const char *gpg)
{
	const char *env = getenv("SOPS_GPG_EXEC");
	if (gpg && *gpg)
		return gpg;
	return env && *env ? env : "gpg";
}

/* Run gpg with `in` on stdin.  A missing program is ERR_NOTFOUND, phrased
 * here because only we know which package to name. */
static int run_gpg(char *const *argv, const void *in, size_t inlen, int secret_out,
                   struct child_result *r, struct err *e)
{
	const struct child_opts o = {in, inlen, GPG_OUT_MAX, GPG_ERR_MAX, secret_out};
	struct err ce = {0};
	if (!child_run(argv, &o, r, &ce))
		return 0;
	if (ce.code == ERR_NOTFOUND)
		return err_set(e, ERR_NOTFOUND,
		               "%s: program not found (install gnupg, or set SOPS_GPG_EXEC)",
		               argv[0]);
	return err_set(e, ce.code, "%s", ce.msg);
}

/* The last few meaningful lines of gpg's stderr, on one line, printable. */
static void summarize_stderr(const struct buf *errb, char *out, size_t cap)
{
	const char *lines[3];
	size_t lens[3], nl = 0, o = 0, i;
	const char *p = errb->data, *end = errb->data ? errb->data + errb->len : NULL;
	out[0] = '\0';
	while (p && p < end) {
		const char *le = memchr(p, '\n', (size_t)(end - p));
		size_t len;
		if (!le)
			le = end;
		len = (size_t)(le - p);
		while (len && (p[len - 1] == '\r' || p[len - 1] == ' '))
			len--;
		if (len) {
			if (nl == 3) {
				memmove(lines, lines + 1, 2 * sizeof(*lines));
				memmove(lens, lens + 1, 2 * sizeof(*lens));
				nl = 2;
			}
			lines[nl] = p;
			lens[nl++] = len;
		}
		p = le + 1;
	}
	for (i = 0; i < nl; i++) {
		size_t k;
		if (i && o + 2 < cap) {
			out[o++] = ';';
			out[o++] = ' ';
		}
		for (k = 0; k < lens[i] && k < 200 && o + 1 < cap; k++) {
			unsigned char c = (unsigned char)lines[i][k];
			out[o++] = (char)(c >= 32 && c < 127 ? c : '?');
		}
	}
	if (o < cap)
		out[o] = '\0';
	if (!nl)
		snprintf(out, cap, "(no message from gpg)");
}

static int gpg_decrypt(const char *gpg, const char *armored, unsigned char key[32], char *why,
                       size_t whycap, struct err *e)
{
	char *argv[] = {
	        (char *)gpg_program(gpg), "--batch", "--no-tty", "--quiet", "--decrypt", NULL};
	struct child_result r = CHILD_RESULT_INIT;
	int rc = -1;
	why[0] = '\0';
	if (run_gpg(argv, armored, strlen(armored), 1, &r, e)) {
		snprintf(why, whycap, "%.600s", e ? e->msg : "gpg failed");
		goto out;
	}
	if (r.status != 0) {
		char sum[512];
		summarize_stderr(&r.err, sum, sizeof(sum));
		snprintf(why, whycap, "gpg exited with status %d: %s", r.status, sum);
		err_set(e, ERR_AUTH, "%s", why);
		goto out;
	}
	if (r.out.len != SOPS_DATA_KEY_LEN) {
		snprintf(why, whycap, "gpg returned %zu bytes instead of a 32-byte data key",
		         r.out.len);
		err_set(e, ERR_INVALID, "%s", why);
		goto out;
	}
	memcpy(key, r.out.data, SOPS_DATA_KEY_LEN);
	rc = 0;
out:
	child_result_free(&r);
	return rc;
}

static int gpg_encrypt(const char *gpg, const char *fpr, const unsigned char key[32],
                       struct buf *armored, struct err *e)
{
	char *argv[] = {(char *)gpg_program(gpg),
	                "--batch",
	                "--no-tty",
	                "--quiet",
	                "--armor",
	                "--trust-model",
	                "always",
	                "--encrypt",
	                "--recipient",
	                (char *)fpr,
	                NULL};
	struct child_result r = CHILD_RESULT_INIT;
	int rc = -1;
	if (run_gpg(argv, key, SOPS_DATA_KEY_LEN, 0, &r, e))
		goto out;
	if (r.status != 0 || !r.out.len || !strstr(r.out.data, "-----BEGIN PGP MESSAGE-----")) {
		char sum[512];
		summarize_stderr(&r.err, sum, sizeof(sum));
		err_set(e, ERR_AUTH, "gpg --encrypt for %s failed (status %d): %s", fpr, r.status,
		        sum);
		goto out;
	}
	if (buf_append(armored, r.out.data, r.out.len)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	rc = 0;
out:
	child_result_free(&r);
	return rc;
}

static int valid_fpr(const char *s)
{
	size_t n = strlen(s), i;
	if (n != 40 && n != 64)
		return 0;
	for (i = 0; i < n; i++)
		if (!isxdigit((unsigned char)s[i]))
			return 0;
	return 1;
}

/* ---------------------------------------------------------------- data key */

int sops_data_key(const struct sops_file *f, const struct sops_keys *k,
                  unsigned char key[SOPS_DATA_KEY_LEN], char *used, size_t usedlen, struct err *e)
{
	struct age_identities ids = {0};
	struct buf why = BUF_INIT, plain = BUF_INIT, srcs = BUF_INIT;
	struct err e2;
	size_t i;
	int rc = -1, nsrc = 0;
	if (used && usedlen)
		used[0] = '\0';
	if (f->nage) {
		/* Load every identity source we were given. */
		if (k && k->age_key_file) {
			if (age_identities_load(&ids, k->age_key_file, &e2))
				buf_appendf(&why, "age: cannot use identity file %s (%s). ",
				            k->age_key_file, e2.msg);
			else
				nsrc++;
			buf_appendf(&srcs, "%s", k->age_key_file);
		}
		if (k && k->age_key_text && *k->age_key_text) {
			if (age_identities_parse(&ids, k->age_key_text, strlen(k->age_key_text),
			                         "SOPS_AGE_KEY", &e2))
				buf_appendf(&why, "age: %s. ", e2.msg);
			else
				nsrc++;
			buf_appendf(&srcs, "%sSOPS_AGE_KEY", srcs.len ? " and " : "");
		}
		if (!srcs.len)
			buf_appendf(&why,
			            "age: no identity file given (pass --sops-age-key-file FILE or "
			            "set SOPS_AGE_KEY_FILE). ");
		for (i = 0; nsrc && i < f->nage; i++) {
			buf_reset(&plain);
			if (age_decrypt(&ids, f->age[i].enc, strlen(f->age[i].enc), &plain, &e2)) {
				if (e2.code != ERR_AUTH)
					buf_appendf(&why, "age entry for %s: %s. ", f->age[i].id,
					            e2.msg);
				continue;
			}
			if (plain.len != SOPS_DATA_KEY_LEN) {
				buf_appendf(&why,
				            "age entry for %s: holds %zu bytes, not a 32-byte "
				            "data key. ",
				            f->age[i].id, plain.len);
				continue;
			}
			memcpy(key, plain.data, SOPS_DATA_KEY_LEN);
			if (used)
				snprintf(used, usedlen, "age:%s", f->age[i].id);
			rc = 0;
			goto out;
		}
		if (nsrc) {
			struct buf mine = BUF_INIT;
			age_identities_describe(&ids, &mine);
			buf_appendf(&why,
			            "age: none of the identities in %s (%s) matches the file's age "
			            "recipients (%s). ",
			            srcs.data, mine.data ? mine.data : "", f->age_list);
			buf_free(&mine);
		}
	}
	if (f->npgp && !(k && k->no_gpg)) {
		char last[700] = "";
		for (i = 0; i < f->npgp; i++) {
			if (!gpg_decrypt(k ? k->gpg : NULL, f->pgp[i].enc, key, last, sizeof(last),
			                 &e2)) {
				if (used)
					snprintf(used, usedlen, "pgp:%s", f->pgp[i].id);
				rc = 0;
				goto out;
			}
			if (e2.code == ERR_NOTFOUND)
				break; /* no gpg at all: no point trying the others */
		}
		buf_appendf(&why,
		            "PGP: gpg could not decrypt for any of the file's PGP keys (%s): %s",
		            f->pgp_list, last);
	} else if (f->npgp) {
		buf_appendf(&why, "PGP: not tried (the file also has PGP keys %s). ", f->pgp_list);
	}
	if (!f->nage && !f->npgp) {
		err_set(e, ERR_INVALID,
		        "the file has no age or PGP recipients%s%s (imgstore can only use age and "
		        "PGP keys)",
		        f->other_keys ? "; it uses " : "", f->other_keys ? f->other_keys : "");
		goto out;
	}
	while (why.len && (why.data[why.len - 1] == ' ' || why.data[why.len - 1] == '.'))
		why.data[--why.len] = '\0';
	err_set(e, ERR_AUTH, "no key could decrypt the file's data key: %s",
	        why.data ? why.data : "");
out:
	age_identities_free(&ids);
	buf_free_secure(&plain);
	buf_free(&why);
	buf_free(&srcs);
	return rc;
}

/* ---------------------------------------------------------------- walk */

struct container {
	size_t line, col, ext_start, end_line;
	int depth;
	char *aad;
};

struct walk {
	const struct sops_file *f;
	yaml_document_t *doc;
	const unsigned char *key;
	struct hash *mac;
	struct sops_tree *out;
	char *path[SOPS_MAX_DEPTH];
	size_t plen[SOPS_MAX_DEPTH];
	int depth;
	struct err *e;
	/* comments support */
	int want_containers;
	struct container *cont;
	size_t ncont;
	/* scalars' line spans, to tell comment lines from block scalar text */
	size_t (*spans)[2];
	size_t nspans;
	unsigned char *seen; /* per node of doc: walked already (see first_visit) */
};

/* A node reached a second time came through a YAML alias (*name).  sops
 * writes none (it expands them), and following them could recurse forever
 * (an alias inside its own anchor) or without bound (aliases of aliases). */
static int first_visit(unsigned char *seen, yaml_document_t *d, yaml_node_t *n, struct err *e)
{
	size_t i = (size_t)(n - d->nodes.start);
	if (seen[i])
		return err_set(e, ERR_INVALID,
		               "line %zu: the value anchored here is used again through a YAML "
		               "alias (*name), which is not supported: write it out each time",
		               n->start_mark.line + 1);
	seen[i] = 1;
	return 0;
}

/* A fresh `seen` for first_visit: one byte per node of d. */
static unsigned char *seen_new(const yaml_document_t *d)
{
	return calloc((size_t)(d->nodes.top - d->nodes.start) + 1, 1);
}

static char *path_aad(char *const *path, const size_t *plen, int depth)
{
	size_t n = 2, o = 0;
	int i;
	char *s;
	if (depth == 0)
		return strdup(":");
	for (i = 0; i < depth; i++)
		n += plen[i] + 1;
	s = malloc(n);
	if (!s)
		return NULL;
	for (i = 0; i < depth; i++) {
		memcpy(s + o, path[i], plen[i]);
		o += plen[i];
		s[o++] = ':';
	}
	s[o] = '\0';
	return s;
}

static int push_leaf(struct sops_leaf **v, size_t *n, struct sops_leaf *l)
{
	struct sops_leaf *nv = realloc(*v, (*n + 1) * sizeof(**v));
	if (!nv)
		return -1;
	*v = nv;
	nv[(*n)++] = *l;
	return 0;
}

static int walk_leaf(struct walk *w, yaml_node_t *node, int in_list)
{
	const char *s = (const char *)node->data.scalar.value;
	size_t slen = node->data.scalar.length;
	int plain = node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
	enum kind kd = K_STR;
	char canon[CANON_MAX];
	struct sops_leaf l;
	int enc, use_canon = 0;
	memset(&l, 0, sizeof(l));
	if (plain)
		kd = resolve_plain(s, canon, sizeof(canon));
	if (kd == K_NULL)
		return 0;
	if (!(l.aad = path_aad(w->path, w->plen, w->depth)))
		return err_set(w->e, ERR_IO, "out of memory");
	l.in_list = in_list;
	l.depth = w->depth;
	enc = should_encrypt(w->f, w->path, w->plen, w->depth);
	if (enc) {
		l.encrypted = 1;
		if (kd != K_STR) {
			err_set(w->e, ERR_INVALID,
			        "value of %.*s is stored in the clear but should be encrypted",
			        (int)strlen(l.aad) - 1, l.aad);
			goto fail;
		}
		if (slen == 0) {
			snprintf(l.type, sizeof(l.type), "str");
			l.value = strdup("");
		} else if (!is_enc(s)) {
			err_set(w->e, ERR_INVALID,
			        "value of %.*s is stored in the clear but should be encrypted",
			        (int)strlen(l.aad) - 1, l.aad);
			goto fail;
		} else if (enc_decrypt(s, w->key, l.aad, &l.value, &l.value_len, l.type, w->e)) {
			err_prefix(w->e, "value of %.*s", (int)strlen(l.aad) - 1, l.aad);
			goto fail;
		} else if (typed_canon(l.type, l.value, canon, sizeof(canon), &use_canon)) {
			err_set(w->e, ERR_INVALID,
			        "value of %.*s is not a valid %s (type changed?)",
			        (int)strlen(l.aad) - 1, l.aad, l.type);
			goto fail;
		}
		if (!l.value) {
			err_set(w->e, ERR_IO, "out of memory");
			goto fail;
		}
		if (use_canon)
			hash_update(w->mac, canon, strlen(canon));
		else
			hash_update(w->mac, l.value, l.value_len);
	} else {
		if (!(l.value = xstrndup(s, slen))) {
			err_set(w->e, ERR_IO, "out of memory");
			goto fail;
		}
		l.value_len = slen;
		if (!w->f->mac_only_encrypted) {
			if (kd != K_STR)
				hash_update(w->mac, canon, strlen(canon));
			else
				hash_update(w->mac, s, slen);
		}
	}
	OPENSSL_cleanse(canon, sizeof(canon));
	if (push_leaf(&w->out->leaves, &w->out->n, &l)) {
		err_set(w->e, ERR_IO, "out of memory");
		goto fail;
	}
	return 0;
fail:
	OPENSSL_cleanse(canon, sizeof(canon));
	free(l.aad);
	free_secret(l.value, l.value_len);
	return -1;
}

static int add_container(struct walk *w, yaml_node_t *node, size_t ext_start)
{
	struct container *nc;
	int block = node->type == YAML_MAPPING_NODE
	                    ? node->data.mapping.style != YAML_FLOW_MAPPING_STYLE
	                    : node->data.sequence.style != YAML_FLOW_SEQUENCE_STYLE;
	if (!w->want_containers || !block)
		return 0;
	nc = realloc(w->cont, (w->ncont + 1) * sizeof(*nc));
	if (!nc)
		return err_set(w->e, ERR_IO, "out of memory");
	w->cont = nc;
	nc = &w->cont[w->ncont];
	nc->line = node->start_mark.line;
	nc->col = node->start_mark.column;
	nc->ext_start = ext_start;
	nc->end_line = node->end_mark.line;
	nc->depth = w->depth;
	if (!(nc->aad = path_aad(w->path, w->plen, w->depth)))
		return err_set(w->e, ERR_IO, "out of memory");
	w->ncont++;
	return 0;
}

static int walk_node(struct walk *w, yaml_node_t *node, int in_list, int top, size_t ext_start)
{
	if (!node)
		return 0;
	if (first_visit(w->seen, w->doc, node, w->e))
		return -1;
	switch (node->type) {
	case YAML_SCALAR_NODE:
		if (w->want_containers && node->end_mark.line > node->start_mark.line) {
			size_t(*ns)[2] = realloc(w->spans, (w->nspans + 1) * sizeof(*ns));
			if (!ns)
				return err_set(w->e, ERR_IO, "out of memory");
			w->spans = ns;
			ns[w->nspans][0] = node->start_mark.line;
			ns[w->nspans++][1] = node->end_mark.line;
		}
		return walk_leaf(w, node, in_list);
	case YAML_SEQUENCE_NODE: {
		yaml_node_item_t *it;
		if (add_container(w, node, ext_start))
			return -1;
		for (it = node->data.sequence.items.start; it < node->data.sequence.items.top;
		     it++) {
			yaml_node_t *c = yaml_document_get_node(w->doc, *it);
			if (walk_node(w, c, 1, 0, c ? c->start_mark.line : 0))
				return -1;
		}
		return 0;
	}
	case YAML_MAPPING_NODE: {
		yaml_node_pair_t *p;
		if (add_container(w, node, ext_start))
			return -1;
		for (p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top; p++) {
			yaml_node_t *k = yaml_document_get_node(w->doc, p->key);
			const char *ks = scalar(k);
			int r;
			if (!ks)
				return err_set(w->e, ERR_INVALID,
				               "line %zu: map keys must be scalars",
				               k ? k->start_mark.line + 1 : 0);
			if (top && !strcmp(ks, "sops"))
				continue;
			if (w->depth >= SOPS_MAX_DEPTH)
				return err_set(w->e, ERR_INVALID, "nested deeper than %d levels",
				               SOPS_MAX_DEPTH);
			w->path[w->depth] = (char *)ks;
			w->plen[w->depth++] = k->data.scalar.length;
			r = walk_node(w, yaml_document_get_node(w->doc, p->value), in_list, 0,
			              k->start_mark.line + 1);
			w->depth--;
			if (r)
				return -1;
		}
		return 0;
	}
	default: return 0;
	}
}

/* "#ENC[...]" comment lines: decrypt each with the path of the innermost
 * block collection that encloses it at the same indentation (how go-yaml
 * attaches such comments in the files sops writes). */
static int walk_comments(struct walk *w, size_t doc_start, size_t doc_end)
{
	const char *p = w->f->text, *end = w->f->text + w->f->textlen;
	size_t line = 0, i;
	for (; p < end; line++) {
		const char *le = memchr(p, '\n', (size_t)(end - p)), *c = p, *ce;
		struct container *best = NULL;
		struct sops_leaf l;
		int inside = 0;
		if (!le)
			le = end;
		ce = le;
		while (c < le && *c == ' ')
			c++;
		if (line < doc_start || line > doc_end || c >= le || *c != '#' ||
		    strncmp(c + 1, ENC_PREFIX, strlen(ENC_PREFIX))) {
			p = le + (le < end);
			continue;
		}
		for (i = 0; i < w->nspans; i++)
			if (line > w->spans[i][0] && line <= w->spans[i][1])
				inside = 1;
		for (i = 0; !inside && i < w->ncont; i++) {
			struct container *k = &w->cont[i];
			if (k->col == (size_t)(c - p) && k->ext_start <= line &&
			    line < k->end_line && (!best || k->depth >= best->depth))
				best = k;
		}
		p = le + (le < end);
		if (inside || !best)
			continue;
		while (ce > c && (ce[-1] == '\r' || ce[-1] == ' '))
			ce--;
		memset(&l, 0, sizeof(l));
		{
			char *encs = xstrndup(c + 1, (size_t)(ce - c - 1));
			int r;
			if (!encs || !(l.aad = strdup(best->aad))) {
				free(encs);
				free(l.aad);
				return err_set(w->e, ERR_IO, "out of memory");
			}
			r = enc_decrypt(encs, w->key, l.aad, &l.value, &l.value_len, l.type, w->e);
			free(encs);
			if (r) {
				err_prefix(w->e, "comment on line %zu", line + 1);
				free(l.aad);
				return -1;
			}
		}
		l.encrypted = 1;
		l.depth = best->depth;
		if (push_leaf(&w->out->comments, &w->out->ncomments, &l)) {
			free(l.aad);
			free_secret(l.value, l.value_len);
			return err_set(w->e, ERR_IO, "out of memory");
		}
	}
	return 0;
}

/* Go's time.RFC3339 formatting of a parsed RFC 3339 time: fraction dropped,
 * a zero offset written as Z. */
static void mac_aad(const char *lm, char *out, size_t cap)
{
	size_t o = 0;
	const char *p = lm;
	for (; *p && o + 1 < cap; p++) {
		if (*p == '.' && p > lm && isdigit((unsigned char)p[-1]) &&
		    isdigit((unsigned char)p[1])) {
			p++;
			while (isdigit((unsigned char)p[1]))
				p++;
			continue;
		}
		out[o++] = *p;
	}
	out[o] = '\0';
	if (o >= 6 && (!strcmp(out + o - 6, "+00:00") || !strcmp(out + o - 6, "-00:00")))
		snprintf(out + o - 6, cap - (o - 6), "Z");
	else if (o && out[o - 1] == 'z')
		out[o - 1] = 'Z';
}

void sops_tree_free(struct sops_tree *t)
{
	size_t i;
	if (!t)
		return;
	for (i = 0; i < t->n; i++) {
		free(t->leaves[i].aad);
		free_secret(t->leaves[i].value, t->leaves[i].value_len);
	}
	for (i = 0; i < t->ncomments; i++) {
		free(t->comments[i].aad);
		free_secret(t->comments[i].value, t->comments[i].value_len);
	}
	free(t->leaves);
	free(t->comments);
	memset(t, 0, sizeof(*t));
}

int sops_decrypt(const struct sops_file *f, const unsigned char key[SOPS_DATA_KEY_LEN],
                 unsigned flags, struct sops_tree *out, struct err *e)
{
	struct walk w;
	unsigned char digest[64];
	char computed[129], aad[64];
	char *stored = NULL;
	size_t stored_len = 0, i, d;
	int rc = -1;
	memset(out, 0, sizeof(*out));
	memset(&w, 0, sizeof(w));
	w.f = f;
	w.key = key;
	w.out = out;
	w.e = e;
	w.want_containers = (flags & SOPS_COMMENTS) != 0;
	if (!(w.mac = hash_new(HASH_SHA512))) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (f->mac_only_encrypted) {
		unsigned char init[32];
		hash_sha256("sops", 4, init);
		hash_update(w.mac, init, sizeof(init));
	}
	for (d = 0; d < f->ndocs; d++) {
		yaml_node_t *root = yaml_document_get_root_node(&f->docs[d]);
		w.doc = &f->docs[d];
		w.depth = 0;
		free(w.seen);
		if (!(w.seen = seen_new(w.doc))) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		if (root && root->type != YAML_MAPPING_NODE) {
			err_set(e, ERR_INVALID, "document %zu: the top level is not a map", d + 1);
			goto out;
		}
		if (walk_node(&w, root, 0, 1, 0))
			goto out;
		if (w.want_containers) {
			size_t end = d + 1 < f->ndocs ? f->docs[d + 1].start_mark.line : (size_t)-1;
			if (walk_comments(&w, d ? f->docs[d].start_mark.line : 0, end))
				goto out;
			for (i = 0; i < w.ncont; i++)
				free(w.cont[i].aad);
			w.ncont = 0;
			w.nspans = 0;
		}
	}
	hash_final(w.mac, digest);
	for (i = 0; i < 64; i++)
		snprintf(computed + 2 * i, 3, "%02X", digest[i]);
	if (!f->mac || !*f->mac) {
		err_set(e, ERR_INVALID,
		        "the file has no MAC (sops.mac): refusing it, it may have been tampered "
		        "with");
		goto out;
	}
	mac_aad(f->lastmodified, aad, sizeof(aad));
	if (enc_decrypt(f->mac, key, aad, &stored, &stored_len, (char[8]){0}, e)) {
		err_prefix(e, "MAC (sops.mac)");
		goto out;
	}
	if (stored_len != 128 || CRYPTO_memcmp(stored, computed, 128)) {
		err_set(e, ERR_INVALID,
		        "MAC mismatch: the file's values do not match its sops.mac (the file was "
		        "modified or corrupted)");
		goto out;
	}
	memcpy(out->mac, computed, sizeof(computed));
	rc = 0;
out:
	OPENSSL_cleanse(digest, sizeof(digest));
	free_secret(stored, stored_len);
	hash_free(w.mac);
	for (i = 0; i < w.ncont; i++)
		free(w.cont[i].aad);
	free(w.cont);
	free(w.spans);
	free(w.seen);
	if (rc)
		sops_tree_free(out);
	return rc;
}

int sops_decrypt_file(const char *path, const struct sops_keys *k, unsigned flags,
                      struct sops_tree *out, struct err *e)
{
	struct sops_file *f = NULL;
	unsigned char key[SOPS_DATA_KEY_LEN];
	char used[160];
	int rc = -1;
	memset(out, 0, sizeof(*out));
	if (sops_load(path, &f, e))
		goto out;
	if (sops_data_key(f, k, key, used, sizeof(used), e)) {
		err_prefix(e, "%s: finding the data key", path);
		goto out;
	}
	if (sops_decrypt(f, key, flags, out, e)) {
		err_prefix(e, "%s: decrypting", path);
		goto out;
	}
	snprintf(out->key_source, sizeof(out->key_source), "%s", used);
	rc = 0;
out:
	OPENSSL_cleanse(key, sizeof(key));
	sops_file_free(f);
	return rc;
}

const struct sops_leaf *sops_tree_get(const struct sops_tree *t, const char *key)
{
	size_t i, kl = strlen(key);
	for (i = 0; i < t->n; i++) {
		const struct sops_leaf *l = &t->leaves[i];
		if (l->depth == 1 && !l->in_list && !strncmp(l->aad, key, kl) &&
		    l->aad[kl] == ':' && !l->aad[kl + 1])
			return l;
	}
	return NULL;
}

/* ---------------------------------------------------------------- encrypt */

struct encw {
	yaml_document_t *doc;
	yaml_emitter_t *em;
	const unsigned char *key;
	struct hash *mac;
	char *path[SOPS_MAX_DEPTH];
	size_t plen[SOPS_MAX_DEPTH];
	int depth;
	pcre2_code *enc_re; /* encrypted_regex, or NULL: the default suffix rule */
	struct err *e;
	unsigned char *seen; /* see first_visit */
};

static int emit(struct encw *w, yaml_event_t *ev)
{
	if (!yaml_emitter_emit(w->em, ev))
		return err_set(w->e, ERR_IO, "writing YAML: %s",
		               w->em->problem ? w->em->problem : "emitter error");
	return 0;
}

static int emit_scalar(struct encw *w, const char *s, size_t len, yaml_scalar_style_t style)
{
	yaml_event_t ev;
	if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)len, 1, 1, style))
		return err_set(w->e, ERR_IO, "out of memory");
	return emit(w, &ev);
}

static int emit_start(struct encw *w, int mapping, int flow)
{
	yaml_event_t ev;
	int ok = mapping ? yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1,
	                                                       flow ? YAML_FLOW_MAPPING_STYLE
	                                                            : YAML_BLOCK_MAPPING_STYLE)
	                 : yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1,
	                                                        flow ? YAML_FLOW_SEQUENCE_STYLE
	                                                             : YAML_BLOCK_SEQUENCE_STYLE);
	if (!ok)
		return err_set(w->e, ERR_IO, "out of memory");
	return emit(w, &ev);
}

static int emit_end(struct encw *w, int mapping)
{
	yaml_event_t ev;
	if (mapping)
		yaml_mapping_end_event_initialize(&ev);
	else
		yaml_sequence_end_event_initialize(&ev);
	return emit(w, &ev);
}

static int enc_leaf(struct encw *w, yaml_node_t *node)
{
	const char *s = (const char *)node->data.scalar.value;
	size_t slen = node->data.scalar.length;
	int plain = node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
	enum kind kd = K_STR;
	char canon[CANON_MAX], *aad = NULL;
	const char *type = "str", *pt = s;
	size_t ptlen = slen, i;
	struct buf v = BUF_INIT;
	int rc = -1, enc = 1;
	if (plain)
		kd = resolve_plain(s, canon, sizeof(canon));
	if (w->enc_re) {
		/* encrypted_regex: only leaves under a key that matches are encrypted */
		pcre2_match_data *md = pcre2_match_data_create_from_pattern(w->enc_re, NULL);
		if (!md) {
			err_set(w->e, ERR_IO, "out of memory");
			goto out;
		}
		enc = 0;
		for (i = 0; i < (size_t)w->depth && !enc; i++)
			enc = pcre2_match(w->enc_re, (PCRE2_SPTR)w->path[i], w->plen[i], 0, 0, md,
			                  NULL) >= 0;
		pcre2_match_data_free(md);
	} else {
		for (i = 0; i < (size_t)w->depth; i++)
			if (w->plen[i] >= strlen(DEFAULT_SUFFIX) &&
			    !memcmp(w->path[i] + w->plen[i] - strlen(DEFAULT_SUFFIX),
			            DEFAULT_SUFFIX, strlen(DEFAULT_SUFFIX)))
				enc = 0;
	}
	if (kd == K_NULL || (kd == K_STR && slen == 0) || !enc) {
		/* Stored as it is; hashed unless null. */
		if (kd != K_NULL)
			hash_update(w->mac, kd == K_STR ? s : canon,
			            kd == K_STR ? slen : strlen(canon));
		rc = emit_scalar(w, s, slen, node->data.scalar.style);
		goto out;
	}
	if (kd != K_STR) {
		type = kd == K_BOOL ? "bool" : kd == K_INT ? "int" : "float";
		pt = canon;
		ptlen = strlen(canon);
	}
	hash_update(w->mac, pt, ptlen);
	if (!(aad = path_aad(w->path, w->plen, w->depth))) {
		err_set(w->e, ERR_IO, "out of memory");
		goto out;
	}
	if (enc_encrypt(w->key, aad, pt, ptlen, type, &v, w->e))
		goto out;
	rc = emit_scalar(w, v.data, v.len, YAML_PLAIN_SCALAR_STYLE);
out:
	OPENSSL_cleanse(canon, sizeof(canon));
	free(aad);
	buf_free(&v);
	return rc;
}

static int enc_node(struct encw *w, yaml_node_t *node, int top)
{
	if (!node)
		return emit_scalar(w, "", 0, YAML_PLAIN_SCALAR_STYLE);
	if (first_visit(w->seen, w->doc, node, w->e))
		return -1;
	switch (node->type) {
	case YAML_SCALAR_NODE: return enc_leaf(w, node);
	case YAML_SEQUENCE_NODE: {
		yaml_node_item_t *it;
		int empty = node->data.sequence.items.top == node->data.sequence.items.start;
		if (emit_start(w, 0, empty))
			return -1;
		for (it = node->data.sequence.items.start; it < node->data.sequence.items.top; it++)
			if (enc_node(w, yaml_document_get_node(w->doc, *it), 0))
				return -1;
		return emit_end(w, 0);
	}
	case YAML_MAPPING_NODE: {
		yaml_node_pair_t *p;
		int empty = node->data.mapping.pairs.top == node->data.mapping.pairs.start;
		if (emit_start(w, 1, empty))
			return -1;
		for (p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top; p++) {
			yaml_node_t *k = yaml_document_get_node(w->doc, p->key);
			const char *ks = scalar(k);
			int r;
			if (!ks)
				return err_set(w->e, ERR_INVALID,
				               "line %zu: map keys must be scalars",
				               k ? k->start_mark.line + 1 : 0);
			if (top && !strcmp(ks, "sops"))
				return err_set(w->e, ERR_INVALID,
				               "it already has a top-level `sops` key (already "
				               "encrypted?)");
			if (w->depth >= SOPS_MAX_DEPTH)
				return err_set(w->e, ERR_INVALID, "nested deeper than %d levels",
				               SOPS_MAX_DEPTH);
			if (emit_scalar(w, ks, k->data.scalar.length, k->data.scalar.style))
				return -1;
			w->path[w->depth] = (char *)ks;
			w->plen[w->depth++] = k->data.scalar.length;
			r = enc_node(w, yaml_document_get_node(w->doc, p->value), 0);
			w->depth--;
			if (r)
				return -1;
		}
		return emit_end(w, 1);
	}
	default: return err_set(w->e, ERR_INVALID, "unsupported YAML node");
	}
}

static int emit_kv(struct encw *w, const char *k, const char *v, yaml_scalar_style_t style)
{
	return emit_scalar(w, k, strlen(k), YAML_PLAIN_SCALAR_STYLE) ||
	       emit_scalar(w, v, strlen(v), style);
}

/* libyaml frees without wiping: clear what held the plaintext first. */
static void wipe_document(yaml_document_t *d)
{
	yaml_node_t *n;
	for (n = d->nodes.start; n && n < d->nodes.top; n++)
		if (n->type == YAML_SCALAR_NODE && n->data.scalar.value)
			OPENSSL_cleanse(n->data.scalar.value, n->data.scalar.length);
}

static void wipe_parser(yaml_parser_t *p)
{
	if (p->raw_buffer.start)
		OPENSSL_cleanse(p->raw_buffer.start,
		                (size_t)(p->raw_buffer.end - p->raw_buffer.start));
	if (p->buffer.start)
		OPENSSL_cleanse(p->buffer.start, (size_t)(p->buffer.end - p->buffer.start));
}

static int write_handler(void *data, unsigned char *buffer, size_t size)
{
	return buf_append(data, buffer, size) == 0;
}

int sops_encrypt(const char *plain, size_t len, const char *name, const struct sops_encrypt_opts *o,
                 struct buf *out, struct err *e)
{
	static const char *const empties[] = {"kms", "gcp_kms", "azure_kv", "hc_vault"};
	yaml_parser_t parser;
	yaml_document_t doc;
	yaml_emitter_t em;
	yaml_event_t ev;
	struct encw w;
	unsigned char key[SOPS_DATA_KEY_LEN], digest[64], pub[AGE_X25519_LEN];
	char computed[129], now[32];
	struct buf tmp = BUF_INIT, mac = BUF_INIT, res = BUF_INIT;
	yaml_node_t *root;
	int parser_ok = 0, doc_ok = 0, em_ok = 0, rc = -1;
	size_t i;
	time_t t = o->now ? o->now : time(NULL);
	memset(&w, 0, sizeof(w));
	name = name ? name : "(input)";
	if (o->nage == 0 && o->npgp == 0)
		return err_set(e, ERR_USAGE,
		               "no recipient: give at least one age recipient or PGP "
		               "fingerprint");
	for (i = 0; i < o->nage; i++)
		if (age_recipient_parse(o->age[i], pub, e))
			return -1;
	for (i = 0; i < o->npgp; i++)
		if (!valid_fpr(o->pgp[i]))
			return err_set(e, ERR_USAGE,
			               "\"%.80s\" is not a PGP fingerprint (40 hex digits, as "
			               "`gpg --list-keys --with-colons` prints in its fpr lines)",
			               o->pgp[i]);
	if (o->encrypted_regex) {
		int ec;
		PCRE2_SIZE off;
		w.enc_re = pcre2_compile((PCRE2_SPTR)o->encrypted_regex, PCRE2_ZERO_TERMINATED,
		                         PCRE2_UTF, &ec, &off, NULL);
		if (!w.enc_re)
			return err_set(
			        e, ERR_INVALID,
			        "encrypted_regex \"%.80s\" is not a valid regular expression "
			        "(at offset %zu)",
			        o->encrypted_regex, (size_t)off);
	}
	time_format_rfc3339(t, now);
	if (!yaml_parser_initialize(&parser)) {
		pcre2_code_free(w.enc_re);
		return err_set(e, ERR_IO, "out of memory");
	}
	parser_ok = 1;
	yaml_parser_set_input_string(&parser, (const unsigned char *)plain, len);
	if (!yaml_parser_load(&parser, &doc)) {
		err_set(e, ERR_INVALID, "%s: line %zu column %zu: invalid YAML: %s", name,
		        parser.problem_mark.line + 1, parser.problem_mark.column + 1,
		        parser.problem ? parser.problem : "syntax error");
		goto out;
	}
	doc_ok = 1;
	root = yaml_document_get_root_node(&doc);
	if (!root || root->type != YAML_MAPPING_NODE) {
		err_set(e, ERR_INVALID, "%s: the plaintext must be a YAML map (key: value lines)",
		        name);
		goto out;
	}
	{
		yaml_document_t more;
		if (!yaml_parser_load(&parser, &more)) {
			err_set(e, ERR_INVALID, "%s: invalid YAML after the first document", name);
			goto out;
		}
		if (yaml_document_get_root_node(&more)) {
			wipe_document(&more);
			yaml_document_delete(&more);
			err_set(e, ERR_INVALID, "%s: only one YAML document is supported", name);
			goto out;
		}
		yaml_document_delete(&more);
	}
	if (RAND_priv_bytes(key, sizeof(key)) != 1) {
		err_set(e, ERR_IO, "random number generator failed (OpenSSL)");
		goto out;
	}
	if (!yaml_emitter_initialize(&em)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	em_ok = 1;
	yaml_emitter_set_output(&em, write_handler, &res);
	yaml_emitter_set_indent(&em, 4);
	yaml_emitter_set_width(&em, -1);
	yaml_emitter_set_unicode(&em, 1);
	w.doc = &doc;
	w.em = &em;
	w.key = key;
	w.e = e;
	if (!(w.seen = seen_new(&doc))) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (!(w.mac = hash_new(HASH_SHA512))) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
	if (emit(&w, &ev))
		goto out;
	yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
	if (emit(&w, &ev))
		goto out;
	/* The data, without its closing MAPPING-END: sops follows. */
	{
		yaml_node_pair_t *p;
		if (emit_start(&w, 1, 0))
			goto out;
		for (p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
			yaml_node_t *k = yaml_document_get_node(&doc, p->key);
			const char *ks = scalar(k);
			int r;
			if (!ks) {
				err_set(e, ERR_INVALID, "%s: line %zu: map keys must be scalars",
				        name, k ? k->start_mark.line + 1 : 0);
				goto out;
			}
			if (!strcmp(ks, "sops")) {
				err_set(e, ERR_INVALID,
				        "%s: it already has a top-level `sops` key (already "
				        "encrypted?)",
				        name);
				goto out;
			}
			if (emit_scalar(&w, ks, k->data.scalar.length, k->data.scalar.style))
				goto out;
			w.path[0] = (char *)ks;
			w.plen[0] = k->data.scalar.length;
			w.depth = 1;
			r = enc_node(&w, yaml_document_get_node(&doc, p->value), 0);
			w.depth = 0;
			if (r) {
				err_prefix(e, "%s", name);
				goto out;
			}
		}
	}
	hash_final(w.mac, digest);
	for (i = 0; i < 64; i++)
		snprintf(computed + 2 * i, 3, "%02X", digest[i]);
	if (enc_encrypt(key, now, computed, 128, "str", &mac, e))
		goto out;
	/* sops: metadata, in the order sops 3.9 writes it. */
	if (emit_scalar(&w, "sops", 4, YAML_PLAIN_SCALAR_STYLE) || emit_start(&w, 1, 0))
		goto out;
	for (i = 0; i < 4; i++)
		if (emit_scalar(&w, empties[i], strlen(empties[i]), YAML_PLAIN_SCALAR_STYLE) ||
		    emit_start(&w, 0, 1) || emit_end(&w, 0))
			goto out;
	if (o->nage) {
		if (emit_scalar(&w, "age", 3, YAML_PLAIN_SCALAR_STYLE) || emit_start(&w, 0, 0))
			goto out;
		for (i = 0; i < o->nage; i++) {
			buf_reset(&tmp);
			if (age_encrypt(&o->age[i], 1, key, sizeof(key), 1, &tmp, e)) {
				err_prefix(e, "age recipient %s", o->age[i]);
				goto out;
			}
			if (emit_start(&w, 1, 0) ||
			    emit_kv(&w, "recipient", o->age[i], YAML_PLAIN_SCALAR_STYLE) ||
			    emit_kv(&w, "enc", tmp.data, YAML_LITERAL_SCALAR_STYLE) ||
			    emit_end(&w, 1))
				goto out;
		}
		if (emit_end(&w, 0))
			goto out;
	}
	if (w.enc_re &&
	    emit_kv(&w, "encrypted_regex", o->encrypted_regex, YAML_SINGLE_QUOTED_SCALAR_STYLE))
		goto out;
	if (emit_kv(&w, "lastmodified", now, YAML_DOUBLE_QUOTED_SCALAR_STYLE) ||
	    emit_kv(&w, "mac", mac.data, YAML_PLAIN_SCALAR_STYLE))
		goto out;
	if (emit_scalar(&w, "pgp", 3, YAML_PLAIN_SCALAR_STYLE) || emit_start(&w, 0, o->npgp == 0))
		goto out;
	for (i = 0; i < o->npgp; i++) {
		char fpr[65];
		size_t j;
		for (j = 0; o->pgp[i][j] && j < 64; j++)
			fpr[j] = (char)toupper((unsigned char)o->pgp[i][j]);
		fpr[j] = '\0';
		buf_reset(&tmp);
		if (gpg_encrypt(o->gpg, fpr, key, &tmp, e))
			goto out;
		if (emit_start(&w, 1, 0) ||
		    emit_kv(&w, "created_at", now, YAML_DOUBLE_QUOTED_SCALAR_STYLE) ||
		    emit_kv(&w, "enc", tmp.data, YAML_LITERAL_SCALAR_STYLE) ||
		    emit_kv(&w, "fp", fpr, YAML_PLAIN_SCALAR_STYLE) || emit_end(&w, 1))
			goto out;
	}
	if (emit_end(&w, 0) ||
	    (!w.enc_re &&
	     emit_kv(&w, "unencrypted_suffix", DEFAULT_SUFFIX, YAML_PLAIN_SCALAR_STYLE)) ||
	    emit_kv(&w, "version", SOPS_VERSION, YAML_PLAIN_SCALAR_STYLE) || emit_end(&w, 1) ||
	    emit_end(&w, 1))
		goto out;
	yaml_document_end_event_initialize(&ev, 1);
	if (emit(&w, &ev))
		goto out;
	yaml_stream_end_event_initialize(&ev);
	if (emit(&w, &ev))
		goto out;
	if (!yaml_emitter_flush(&em)) {
		err_set(e, ERR_IO, "writing YAML failed");
		goto out;
	}
	if (buf_append(out, res.data, res.len)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	rc = 0;
out:
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(digest, sizeof(digest));
	hash_free(w.mac);
	free(w.seen);
	if (em_ok)
		yaml_emitter_delete(&em);
	if (doc_ok) {
		wipe_document(&doc);
		yaml_document_delete(&doc);
	}
	if (parser_ok) {
		wipe_parser(&parser);
		yaml_parser_delete(&parser);
	}
	pcre2_code_free(w.enc_re);
	buf_free(&tmp);
	buf_free(&mac);
	buf_free(&res);
	return rc;
}
