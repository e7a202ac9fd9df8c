/* libFuzzer target: age.c's parsers on any bytes, all at once: the input as
 * an identity file, as a recipient ("age1..."), as an age file (armored or
 * binary) to decrypt with a fixed test identity, and as base64.
 * Invariants: a recipient that parses formats back to itself; base64 that
 * decodes re-encodes to the same text (the decoder is canonical); a refusal
 * always says why. */
#include "store/secrets/age.h"

#include "fuzz_keys.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static struct age_identities ids;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct err e;
	(void)argc;
	(void)argv;
	if (age_identities_parse(&ids, FUZZ_AGE_IDENTITY, strlen(FUZZ_AGE_IDENTITY), "fuzz", &e))
		abort();
	return 0;
}

static void b64_roundtrip(const char *s, size_t n, int padded)
{
	unsigned char *bin = malloc(age_b64_decoded_max(n));
	struct buf back = BUF_INIT;
	size_t len = 0;
	if (!bin)
		abort();
	if (!age_b64_decode(s, n, padded, bin, &len)) {
		if (len > age_b64_decoded_max(n) || age_b64_encode(bin, len, padded, &back) ||
		    back.len != n || memcmp(back.data, s, n))
			abort();
	}
	buf_free(&back);
	free(bin);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct age_identities got = {0};
	struct buf out = BUF_INIT;
	struct err e;
	char *s = malloc(size + 1);
	unsigned char pub[AGE_X25519_LEN];

	if (!s)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';

	/* identity file */
	e.code = ERR_OK;
	if (age_identities_parse(&got, s, size, "fuzz", &e)) {
		if (e.code != ERR_INVALID)
			abort();
	} else {
		struct buf d = BUF_INIT;
		if (!got.n || age_identities_describe(&got, &d) || !d.data)
			abort();
		buf_free(&d);
	}
	age_identities_free(&got);

	/* recipient */
	if (!age_recipient_parse(s, pub, &e)) {
		char again[AGE_RECIPIENT_MAX];
		age_recipient_format(pub, again);
		if (strcmp(again, s))
			abort();
	} else if (e.code != ERR_USAGE) {
		abort();
	}

	/* age file */
	if (age_decrypt(&ids, data, size, &out, &e)) {
		if (e.code != ERR_INVALID && e.code != ERR_AUTH)
			abort();
	}
	buf_free_secure(&out);

	if (size <= 4096) {
		b64_roundtrip(s, size, 0);
		b64_roundtrip(s, size, 1);
	}
	free(s);
	return 0;
}
