/* libFuzzer target: any bytes -> manifest_load_buffer, then the helpers on
 * what loaded.  Checks invariants: a loaded manifest has every required
 * field; a refused one says why. */
#include "manifest/manifest.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char sample[] = "talos_image_url = \"https://old.example/x.raw.xz\"\n"
                             "talos_image_checksum = \"sha256:00\"\n"
                             "image = 42\nname: alpine\n\xff\xfe not UTF-8\n";

static void use_image(const struct mf_image *img, const uint8_t *data, size_t size)
{
	struct mf_apply_result r;
	struct err e;
	if (!img->name || !img->source.url || !img->source.checksum || !img->destination)
		abort();
	if (strncmp(img->source.url, "https://", 8) || mf_check_destination(img->destination, &e))
		abort();
	if (!mf_image_effective_checksum(img))
		abort();
	for (size_t u = 0; u < img->nupdate_files; u++) {
		const struct mf_update_file *uf = &img->update_files[u];
		if (!uf->path || !uf->nreplacements)
			abort();
		for (size_t i = 0; i < uf->nreplacements; i++) {
			char *out = NULL;
			if (!uf->replacements[i].pattern || !uf->replacements[i].value)
				abort();
			/* Validated templates always expand. */
			if (mf_expand_template(img, uf->replacements[i].value, &out, &e))
				abort();
			free(out);
		}
		/* Validated patterns may still hit the match limit, nothing worse. */
		if (mf_apply_replacements(img, uf, sample, sizeof(sample) - 1, &r, &e) == 0 &&
		    (!r.text || r.nmatches != uf->nreplacements))
			abort();
		mf_apply_result_free(&r);
		if (mf_apply_replacements(img, uf, (const char *)data, size < 512 ? size : 512, &r,
		                          &e) == 0 &&
		    !r.text)
			abort();
		mf_apply_result_free(&r);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct manifest *m = NULL;
	struct mf_problems p = MF_PROBLEMS_INIT;
	struct err e;

	if (manifest_load_buffer(data, size, "fuzz.yaml", &m, &p, &e) == 0) {
		if (!m || p.n || !m->name)
			abort();
		for (size_t i = 0; i < m->nimages; i++) {
			use_image(&m->images[i], data, size);
			if (manifest_find_image(m, m->images[i].name) != &m->images[i] ||
			    manifest_find_destination(m, m->images[i].destination) != &m->images[i])
				abort(); /* names and destinations are unique */
		}
		for (size_t i = 0; i < m->noverlays; i++) {
			const struct mf_overlay *o = &m->overlays[i];
			if (!o->name || !o->output || !o->base || !o->base_image)
				abort();
			if (manifest_find_overlay(m, o->name) != o)
				abort();
		}
		(void)manifest_suggest_image(m, "talos");
	} else {
		if (m || (e.code == ERR_INVALID && p.n == 0))
			abort();
		for (size_t i = 0; i < p.n; i++) {
			char *s = mf_problem_format(&p, i);
			if (!s || !p.v[i].msg || p.v[i].line < 1 || p.v[i].col < 1)
				abort();
			free(s);
		}
	}
	manifest_free(m);
	mf_problems_free(&p);
	return 0;
}
