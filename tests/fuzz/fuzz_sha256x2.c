/* libFuzzer target: common/sha256x2 against OpenSSL, differentially.  The
 * input is both the program and the data: from each position, a step takes
 * an op byte and a 16-bit length, and hashes that many bytes of the input
 * from just after them (clamped to the end), so steps overlap and lengths
 * reach any offset within a block.  Op, low 3 bits: 0 = sha256x2_update of
 * the same bytes into a and b, 1 = of different bytes (b's start shifted by
 * the op's high bits), 2 = sha256_update of a, 3 = of b, 4 = sha256x2_block
 * with a as the running state, 5 = sha256_final of both, 6 = sha256x3_block
 * with a as the running state and b as the part's; 7 = skip a byte.
 * Every digest must equal OpenSSL's on the same bytes, or abort(). */
#include "common/sha256x2.h"

#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void same_final(struct sha256_state *s, EVP_MD_CTX *ref)
{
	unsigned char got[32], want[32];
	unsigned int len = 32;
	sha256_final(s, got);
	if (!EVP_DigestFinal_ex(ref, want, &len) || !EVP_DigestInit_ex(ref, EVP_sha256(), NULL))
		abort();
	if (memcmp(got, want, 32))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
	struct sha256_state *a = sha256_state_new(), *b = sha256_state_new();
	EVP_MD_CTX *ra = EVP_MD_CTX_new(), *rb = EVP_MD_CTX_new();
	size_t i = 0;

	if (!a || !b || !ra || !rb || !EVP_DigestInit_ex(ra, EVP_sha256(), NULL) ||
	    !EVP_DigestInit_ex(rb, EVP_sha256(), NULL))
		abort();
	while (i + 3 <= size) {
		unsigned op = in[i];
		size_t off = i + 3, n = (size_t)in[i + 1] | (size_t)in[i + 2] << 8;
		size_t shift = op >> 3;
		unsigned char got[32], want[32];
		unsigned int len = 32;

		if ((op & 7) == 7) {
			i++;
			continue;
		}
		if (n > size - off)
			n = size - off;
		switch (op & 7) {
		case 0:
			sha256x2_update(a, in + off, b, in + off, n);
			EVP_DigestUpdate(ra, in + off, n);
			EVP_DigestUpdate(rb, in + off, n);
			break;
		case 1:
			if (shift > size - off)
				shift = size - off;
			if (n > size - off - shift)
				n = size - off - shift;
			sha256x2_update(a, in + off, b, in + off + shift, n);
			EVP_DigestUpdate(ra, in + off, n);
			EVP_DigestUpdate(rb, in + off + shift, n);
			break;
		case 2:
			sha256_update(a, in + off, n);
			EVP_DigestUpdate(ra, in + off, n);
			break;
		case 3:
			sha256_update(b, in + off, n);
			EVP_DigestUpdate(rb, in + off, n);
			break;
		case 4:
			sha256x2_block(a, in + off, n, got);
			EVP_DigestUpdate(ra, in + off, n);
			if (!EVP_Digest(in + off, n, want, &len, EVP_sha256(), NULL) ||
			    memcmp(got, want, 32))
				abort();
			break;
		case 6:
			sha256x3_block(a, b, in + off, n, got);
			EVP_DigestUpdate(ra, in + off, n);
			EVP_DigestUpdate(rb, in + off, n);
			if (!EVP_Digest(in + off, n, want, &len, EVP_sha256(), NULL) ||
			    memcmp(got, want, 32))
				abort();
			break;
		case 5:
			same_final(a, ra);
			same_final(b, rb);
			break;
		}
		i += 3;
	}
	same_final(a, ra);
	same_final(b, rb);
	sha256_state_free(a);
	sha256_state_free(b);
	EVP_MD_CTX_free(ra);
	EVP_MD_CTX_free(rb);
	return 0;
}
