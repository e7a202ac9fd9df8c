#!/bin/bash
# Run libFuzzer targets on a copy of their seeds; fail on the first crash,
# leak, timeout or out-of-memory.
#
#   tests/fuzz/smoke.sh BUILD_DIR LIMIT [NAME...]
#     BUILD_DIR  a build configured with CC=clang -Dfuzz=true
#     LIMIT      -max_total_time=SECONDS or -runs=N (then with -seed=1)
#     NAME       manifest record recindex s3_xml sops age sha256x2 xz (default: all)
#
# The corpus is a temporary copy (what the fuzzer adds is thrown away), so
# nothing is written to the source tree.  After a failure the temporary
# directory is kept; the input that failed is printed (base64) and its path
# given, for tests/fuzz/crashes-found/ or the seed corpus.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
[ $# -ge 2 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
BUILD=$(cd "$1" && pwd)
LIMIT=$2
shift 2
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(manifest record recindex s3_xml sops age sha256x2 xz)

# Per target: libFuzzer options, and seeds kept elsewhere in the repository.
opts() {
	case $1 in
	manifest) echo "-max_len=8192 -dict=$HERE/manifest.dict" ;;
	record) echo "-max_len=4096 -dict=$HERE/record.dict" ;;
	recindex) echo "-max_len=4096 -dict=$HERE/recindex.dict" ;;
	s3_xml) echo "-max_len=4096 -dict=$HERE/s3_xml.dict" ;;
	sops) echo "-max_len=8192 -dict=$HERE/sops.dict" ;;
	age) echo "-max_len=4096 -dict=$HERE/age.dict" ;;
	sha256x2) echo "-max_len=8192" ;;
	xz) echo "-max_len=32768 -dict=$HERE/xz.dict" ;;
	*) return 1 ;;
	esac
}
extra_seeds() {
	local d=$ROOT/tests/data/sops
	case $1 in
	sops) ls "$d"/*/*.yaml "$d"/*/*.json "$d"/getsops-sops/example.txt 2>/dev/null | grep -v expected.json || true ;;
	age) ls "$d"/helm-secrets/key.txt "$d"/sops-nix/age-keys.txt "$d"/kustomize-controller/age.txt 2>/dev/null || true ;;
	esac
}

seed=()
case $LIMIT in
-runs=*) seed=(-seed=1) ;;
-max_total_time=*) ;;
*) echo "smoke.sh: LIMIT is -max_total_time=SECONDS or -runs=N, not $LIMIT" >&2; exit 2 ;;
esac

status=0
for name in "${names[@]}"; do
	bin=$BUILD/tests/fuzz/fuzz_$name
	o=$(opts "$name") || { echo "smoke.sh: no fuzz target \"$name\"" >&2; exit 2; }
	[ -x "$bin" ] || { echo "smoke.sh: $bin not built (ninja -C $BUILD tests/fuzz/fuzz_$name)" >&2; exit 2; }
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/fuzz_$name.XXXXXX")
	mkdir "$tmp/corpus" "$tmp/artifacts"
	cp "$HERE/corpus/$name"/* "$tmp/corpus/"
	extra_seeds "$name" | while read -r f; do cp "$f" "$tmp/corpus/$(basename "$(dirname "$f")")-$(basename "$f")"; done
	# shellcheck disable=SC2086 # $o is a list of options
	if (cd "$tmp" && "$bin" "$LIMIT" "${seed[@]}" $o -timeout=25 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$tmp/artifacts/" corpus) >"$tmp/log" 2>&1; then
		# "#12345	DONE   cov: 1234 ft: 5678 corp: 90/12Kb lim: ... exec/s: ... rss: ..."
		done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$tmp/log" | tail -1 | tr -s ' \t' ' ' || true)
		echo "fuzz_$name: ok ${done_line:-(no DONE line)}"
		rm -rf "$tmp"
	else
		echo "fuzz_$name: FAILED; the log ends:" >&2
		tail -n 60 "$tmp/log" >&2
		for a in "$tmp"/artifacts/*; do
			[ -f "$a" ] || continue
			echo "fuzz_$name: failing input $a ($(stat -c %s "$a") bytes); base64:" >&2
			head -c 8192 "$a" | base64 >&2
		done
		echo "fuzz_$name: log and inputs kept in $tmp" >&2
		status=1
	fi
done
exit $status
