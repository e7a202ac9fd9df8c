/* The age identity of the fuzz targets: a test key made for them with
 * age_keygen, protecting nothing.  The seed files in corpus/sops and
 * corpus/age are encrypted to its recipient, so a fuzzer can get through the
 * age layer to the code behind it. */
#ifndef IMGSTORE_TESTS_FUZZ_KEYS_H
#define IMGSTORE_TESTS_FUZZ_KEYS_H

#define FUZZ_AGE_IDENTITY                                                                          \
	"AGE-SECRET-KEY-1K7R99ZHCY8YAQ7ETYLTC8MW6X5VKJFV6AHCE57M5LWAE7AL476HSW0G2LQ\n"
#define FUZZ_AGE_RECIPIENT "age13vadmctcgljw65hm92stk5mc6smh9475hqh2s5ga4mkrqtyt5e7qhmsfef"

#endif
