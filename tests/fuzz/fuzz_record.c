/* libFuzzer target: any bytes -> record_parse (the checksum record a reader
 * trusts to verify every block).  Invariants: a parsed record validates,
 * serializes, and parses back to the same fields; its blocks cover exactly
 * `size` bytes; it matches the object it names. */
#include "store/record.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void same(const struct record *a, const struct record *b)
{
	if (strcmp(a->name, b->name) || strcmp(a->checksum, b->checksum) || a->size != b->size ||
	    strcmp(a->uploaded_at, b->uploaded_at) || strcmp(a->etag, b->etag) ||
	    a->block_size != b->block_size || a->nblocks != b->nblocks ||
	    !a->source_url != !b->source_url ||
	    (a->source_url && strcmp(a->source_url, b->source_url)) ||
	    (a->nblocks && memcmp(a->hashes, b->hashes, a->nblocks * sizeof(*a->hashes))))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct record r, r2;
	struct err e;
	char *json = NULL;
	uint64_t covered = 0;

	if (record_parse((const char *)data, size, &r, &e)) {
		if (e.code != ERR_INVALID && e.code != ERR_IO)
			abort();
		/* a failed parse leaves nothing behind to free */
		if (r.name || r.source_url || r.hashes || r.nblocks)
			abort();
		return 0;
	}
	if (record_validate(&r, &e))
		abort();
	for (size_t i = 0; i < r.nblocks; i++) {
		uint32_t len = record_block_len(&r, i);
		if (!len || len > r.block_size || (i + 1 < r.nblocks && len != r.block_size))
			abort();
		covered += len;
		/* the zero hash of a large block costs a full SHA-256 pass: small ones only */
		if (len <= 65536)
			(void)record_block_is_zero(&r, i);
	}
	if (covered != r.size || record_block_len(&r, r.nblocks) != 0)
		abort();
	if (record_matches_object(&r, r.size, r.etag, &e) ||
	    !record_matches_object(&r, r.size + 1, r.etag, &e))
		abort();

	json = record_to_json(&r, &e);
	if (!json || record_parse(json, strlen(json), &r2, &e))
		abort();
	same(&r, &r2);
	record_free(&r2);
	free(json);
	record_free(&r);
	return 0;
}
