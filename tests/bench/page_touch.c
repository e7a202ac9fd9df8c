/* What a page of memory the kernel hands out costs on this machine, as a
 * reference for the CPU figures of cold.sh and mount.sh: every page-cache
 * page a read fills (the FUSE file's, the cache files') is such a page.
 *
 * On a VM whose host backs guest memory lazily and takes freed memory back
 * (virtio-balloon free page reporting), the first touch of a page costs a
 * fault in the host as well as in the guest: several times what it costs on
 * a page the guest had touched before.  Both are measured in the same run,
 * as CPU seconds (of this process) per GiB of 4 KiB pages:
 *
 *   fresh    a new anonymous mapping of SIZE MiB, one byte written per page
 *   again    the same, right after the first mapping was unmapped (the
 *            kernel hands out mostly the pages it just got back)
 *
 *   page_touch [SIZE_MIB]      default 512
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>

static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

/* CPU s per GiB to map and touch n bytes, or a negative value on error. */
static double touch(size_t n)
{
	double t0 = cpu_s(), t;
	volatile unsigned char *p =
	        mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	/* THP would hand out 2 MiB pages; the page cache uses small ones */
	madvise((void *)p, n, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < n; i += 4096)
		p[i] = 1;
	t = cpu_s() - t0;
	munmap((void *)p, n);
	return t * (double)(1u << 30) / (double)n;
}

int main(int argc, char **argv)
{
	char *end;
	unsigned long mib = argc > 1 ? strtoul(argv[1], &end, 10) : 512;
	if (argc > 2 || (argc > 1 && (*end || mib == 0 || mib > (1ul << 20)))) {
		fprintf(stderr, "usage: page_touch [SIZE_MIB]   (default 512)\n");
		return 2;
	}
	double fresh = touch((size_t)mib << 20), again = touch((size_t)mib << 20);
	if (fresh < 0 || again < 0) {
		perror("page_touch: mmap");
		return 1;
	}
	printf("page_touch: CPU s per GiB of 4 KiB pages: fresh %.3f, again %.3f (%lu MiB)\n",
	       fresh, again, mib);
	return 0;
}
