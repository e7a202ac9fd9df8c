#include "common/slab.h"

#include <stdint.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SLAB_POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define SLAB_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define SLAB_POISON(p, n)   ((void)(p), (void)(n))
#define SLAB_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

int slab_init(struct slab *s, size_t len, size_t count)
{
	void *m;
	*s = (struct slab){0};
	len = (len + sizeof(void *) - 1) / sizeof(void *) * sizeof(void *);
	if (!len || !count || count > SIZE_MAX / len)
		return -1;
	/* NORESERVE: pages count only once touched, and a buffer that is
	 * never needed is never touched (slab_get hands out fresh ones in
	 * order, after the given-back ones) */
	m = mmap(NULL, len * count, PROT_READ | PROT_WRITE,
	         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		return -1;
	s->base = m;
	s->len = len;
	s->count = count;
	SLAB_POISON(s->base, len * count);
	return 0;
}

void *slab_get(struct slab *s)
{
	unsigned char *p;
	if (s->free) {
		p = s->free;
		SLAB_UNPOISON(p, sizeof(void *));
		s->free = *(void **)p;
		s->nfree--;
	} else if (s->fresh < s->count) {
		p = s->base + s->fresh++ * s->len;
	} else {
		return NULL;
	}
	SLAB_UNPOISON(p, s->len);
	return p;
}

int slab_put(struct slab *s, void *p)
{
	uintptr_t a = (uintptr_t)p, b = (uintptr_t)s->base;
	if (!p || !s->base || a < b || a - b >= s->len * s->count || (a - b) % s->len)
		return 0;
	SLAB_POISON(p, s->len);
	SLAB_UNPOISON(p, sizeof(void *));
	*(void **)p = s->free;
	SLAB_POISON(p, sizeof(void *));
	s->free = p;
	s->nfree++;
	return 1;
}

size_t slab_used(const struct slab *s)
{
	return s->fresh - s->nfree;
}

void slab_destroy(struct slab *s)
{
	if (s->base) {
		SLAB_UNPOISON(s->base, s->len * s->count);
		munmap(s->base, s->len * s->count);
	}
	*s = (struct slab){0};
}
