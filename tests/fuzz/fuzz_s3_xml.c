/* libFuzzer target: the S3 response parsers of s3_xml.c.  The first byte
 * picks the parser (its low 3 bits: "0".."7" in the seed files), the rest is
 * the response body.  Invariants: what a parser fills is bounded,
 * NUL-terminated and free of control characters where the header promises
 * it; a listing's keys survive s3_xml_escape -> parse unchanged (the
 * escaping is what request bodies are built with). */
#include "store/s3/s3_xml.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void clean(const char *s, size_t cap)
{
	size_t n = strnlen(s, cap);
	if (n == cap)
		abort(); /* not NUL-terminated within its buffer */
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			abort();
}

/* The keys of a parsed listing, escaped into a listing of our own, parse
 * back to the same bytes. */
static void keys_roundtrip(const struct s3_xml_list *l)
{
	struct buf x = BUF_INIT;
	struct s3_xml_list back = {0};
	struct err e;
	if (buf_appends(&x, "<ListBucketResult>"))
		abort();
	for (size_t i = 0; i < l->nobjs; i++)
		if (buf_appends(&x, "<Contents><Key>") || s3_xml_escape(&x, l->objs[i].key) ||
		    buf_appends(&x, "</Key></Contents>"))
			abort();
	if (buf_appends(&x, "</ListBucketResult>"))
		abort();
	if (s3_xml_parse_list(x.data, x.len, &back, &e) || back.nobjs != l->nobjs)
		abort();
	for (size_t i = 0; i < l->nobjs; i++)
		if (strcmp(back.objs[i].key, l->objs[i].key))
			abort();
	s3_xml_list_free(&back);
	buf_free(&x);
}

static void list(const char *x, size_t n, int pages)
{
	struct s3_xml_list acc = {0};
	struct err e;
	size_t before = 0;
	for (int p = 0; p < pages; p++) {
		if (s3_xml_parse_list(x, n, &acc, &e)) {
			if (e.code != ERR_SERVER && e.code != ERR_IO)
				abort();
			break;
		}
		if (acc.nobjs < before || acc.nobjs > acc.cap_objs ||
		    acc.nprefixes > acc.cap_prefixes || (acc.truncated != 0 && acc.truncated != 1))
			abort();
		before = acc.nobjs;
		for (size_t i = 0; i < acc.nobjs; i++)
			if (!acc.objs[i].key)
				abort();
	}
	for (size_t i = 0; i < acc.nobjs; i++)
		clean(acc.objs[i].etag, sizeof(acc.objs[i].etag));
	for (size_t i = 0; i < acc.nprefixes; i++)
		if (!acc.prefixes[i])
			abort();
	if (acc.nobjs && acc.nobjs <= 64)
		keys_roundtrip(&acc);
	s3_xml_list_free(&acc);
}

static void uploads(const char *x, size_t n, int pages)
{
	struct s3_xml_uploads acc = {0};
	struct err e;
	for (int p = 0; p < pages; p++) {
		if (s3_xml_parse_uploads(x, n, &acc, &e))
			break;
		if (acc.n > acc.cap)
			abort();
		for (size_t i = 0; i < acc.n; i++)
			if (!acc.v[i].key || !acc.v[i].upload_id)
				abort();
	}
	s3_xml_uploads_free(&acc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *x = (const char *)data + 1;
	size_t n = size ? size - 1 : 0;
	struct err e;

	if (!size)
		return 0;
	switch (data[0] & 7) {
	case 0: list(x, n, 1); break;
	case 1: list(x, n, 2); break;
	case 2: uploads(x, n, 1); break;
	case 3: uploads(x, n, 2); break;
	case 4: {
		char *id = NULL;
		int rc = s3_xml_parse_initiate(x, n, &id, &e);
		if (rc ? id != NULL : !id || !*id)
			abort();
		free(id);
		break;
	}
	case 5: {
		char etag[S3_ETAG_MAX], code[64], msg[256];
		int is_error = -1;
		memset(code, 'x', sizeof(code));
		memset(msg, 'x', sizeof(msg));
		if (!s3_xml_parse_complete(x, n, etag, &is_error, code, sizeof(code), msg,
		                           sizeof(msg), &e)) {
			if (is_error)
				abort();
			clean(etag, sizeof(etag));
		} else if (is_error == 1) {
			clean(code, sizeof(code));
			clean(msg, sizeof(msg));
		} else if (is_error != 0) {
			abort();
		}
		break;
	}
	case 6: {
		struct s3_xml_delete_result d;
		if (!s3_xml_parse_delete(x, n, &d, &e)) {
			clean(d.key, sizeof(d.key));
			clean(d.code, sizeof(d.code));
			clean(d.msg, sizeof(d.msg));
		}
		break;
	}
	case 7: {
		char code[16], msg[64];
		if (!s3_xml_error(x, n, code, sizeof(code), msg, sizeof(msg))) {
			clean(code, sizeof(code));
			clean(msg, sizeof(msg));
		}
		/* zero-sized buffers are left alone */
		(void)s3_xml_error(x, n, code, 0, msg, 0);
		break;
	}
	}
	return 0;
}
