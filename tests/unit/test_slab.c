/* common/slab: fixed-size buffers from one mapping. */
#include "check.h"
#include "common/slab.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* Pages of [p, p+len) that are resident. */
static size_t resident_pages(void *p, size_t len)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t n = (len + (size_t)pg - 1) / (size_t)pg, got = 0;
	unsigned char *v = malloc(n);
	if (!v || mincore(p, len, v)) {
		free(v);
		return SIZE_MAX;
	}
	for (size_t i = 0; i < n; i++)
		got += v[i] & 1;
	free(v);
	return got;
}

static void test_take_and_give_back(void)
{
	struct slab s;
	unsigned char *a, *b, *c;
	void *heap = malloc(16);
	CHECK(slab_init(&s, 1000, 3) == 0);
	CHECK(s.len == 1000);
	a = slab_get(&s);
	b = slab_get(&s);
	c = slab_get(&s);
	CHECK(a && b && c && a != b && b != c && a != c);
	CHECK(slab_get(&s) == NULL); /* all three out: the caller mallocs */
	CHECK(slab_used(&s) == 3);
	memset(a, 0xa5, 1000);
	memset(b, 0x5a, 1000);
	memset(c, 0xff, 1000);
	CHECK(a[999] == 0xa5 && b[0] == 0x5a); /* no overlap */
	CHECK(slab_put(&s, heap) == 0);        /* not the slab's: free it */
	CHECK(slab_put(&s, b + 8) == 0);       /* inside a buffer, not one */
	CHECK(slab_put(&s, NULL) == 0);
	CHECK(slab_put(&s, b) == 1);
	CHECK(slab_used(&s) == 2);
	CHECK(slab_get(&s) == b); /* the given-back one again */
	CHECK(slab_put(&s, a) == 1 && slab_put(&s, b) == 1 && slab_put(&s, c) == 1);
	CHECK(slab_used(&s) == 0);
	free(heap);
	slab_destroy(&s);
	CHECK(s.base == NULL);
	CHECK(slab_get(&s) == NULL);
	CHECK(slab_put(&s, a) == 0); /* after destroy nothing is the slab's */
}

static void test_rounding_and_bad_sizes(void)
{
	struct slab s;
	CHECK(slab_init(&s, 1001, 2) == 0);
	CHECK(s.len == 1008 || s.len == 1004); /* a multiple of the pointer size */
	CHECK(s.len % sizeof(void *) == 0);
	slab_destroy(&s);
	CHECK(slab_init(&s, 0, 2) == -1);
	CHECK(slab_get(&s) == NULL);
	CHECK(slab_init(&s, 4096, 0) == -1);
	CHECK(slab_init(&s, SIZE_MAX / 2, 4) == -1); /* the size overflows */
	CHECK(s.base == NULL);
}

/* Only what is handed out is ever touched: a budget of 1 GiB that a mount
 * never uses costs nothing, and given-back buffers are reused before fresh
 * ones. */
static void test_untouched_until_used(void)
{
	struct slab s;
	const size_t len = 1 << 20, count = 1024;
	unsigned char *p, *q;
	CHECK(slab_init(&s, len, count) == 0);
	CHECK(resident_pages(s.base, len * count) == 0);
	p = slab_get(&s);
	memset(p, 1, len);
	CHECK(slab_put(&s, p) == 1);
	q = slab_get(&s);
	CHECK(q == p);
	memset(q, 2, len);
	CHECK(resident_pages(s.base, len * count) == len / (size_t)sysconf(_SC_PAGESIZE));
	CHECK(slab_put(&s, q) == 1);
	slab_destroy(&s);
}

int main(void)
{
	test_take_and_give_back();
	test_rounding_and_bad_sizes();
	test_untouched_until_used();
	return check_report("slab");
}
