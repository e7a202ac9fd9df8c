#!/bin/bash
# Build the Debian package imgstore_VERSION_ARCH.deb from this checkout and
# check it with lintian.  The checkout is left as it is: the sources are
# copied to a scratch directory and built there.
#
#   deploy/build-deb.sh [--no-lintian] [OUTDIR]      (OUTDIR default: ./dist)
#
# Installs what the build lacks (dpkg-dev, debhelper, lintian and the
# Build-Depends of debian/control) with apt when run as root.  Writes the
# .deb, .buildinfo and .changes to OUTDIR and prints their paths.
# DEB_BUILD_OPTIONS passes through: nocheck skips the unit tests, parallel=N.
# Exit status: 0 built (lintian found no error), 1 the build or lintian
# failed, 2 usage.  Then, on Debian 12:  apt install ./dist/imgstore_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

lintian=1 out=
for a in "$@"; do
	case $a in
	--no-lintian) lintian=0 ;;
	-h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) echo "build-deb.sh: unknown option $a (see --help)" >&2; exit 2 ;;
	*) [ -z "$out" ] || { echo "build-deb.sh: one OUTDIR only" >&2; exit 2; }; out=$a ;;
	esac
done
out=${out:-dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

apt_install() {
	if [ "$(id -u)" != 0 ]; then
		echo "build-deb.sh: missing: $*; run me as root (or apt-get install them)" >&2
		exit 1
	fi
	echo "build-deb.sh: installing $*"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

tools=(dpkg-dev debhelper fakeroot)
[ $lintian = 1 ] && tools+=(lintian)
missing=()
for p in "${tools[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
if ! dpkg-checkbuilddeps >/dev/null 2>&1; then
	if [ "$(id -u)" != 0 ]; then
		dpkg-checkbuilddeps
		exit 1
	fi
	echo "build-deb.sh: installing the Build-Depends of debian/control"
	DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq "$ROOT" >/dev/null
fi

# a copy of the sources: what git tracks (plus new files not ignored), or,
# outside git, everything but build directories
version=$(dpkg-parsechangelog -S Version)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/imgstore-deb.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
src=$scratch/imgstore-$version
mkdir "$src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	# shellcheck disable=SC2016 # the script is sh's, expanded there
	git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
		(cd "$ROOT" && xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) |
		tar -C "$ROOT" --null -T - -cf - | tar -C "$src" -xf -
else
	tar -C "$ROOT" --exclude='./build*' --exclude=./dist --exclude=./.git -cf - . | tar -C "$src" -xf -
fi

echo "build-deb.sh: building imgstore $version in $src"
(cd "$src" && dpkg-buildpackage -us -uc -b) >"$scratch/build.log" 2>&1 || {
	tail -n 60 "$scratch/build.log" >&2
	echo "build-deb.sh: dpkg-buildpackage failed (the last 60 lines are above)" >&2
	exit 1
}
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
changes=$scratch/imgstore_${version}_$arch.changes
# imgstore and imgstore-dbgsym (the debug symbols dh_strip splits off)
files=("$scratch"/*_"$version"_*.deb "$scratch"/imgstore_"$version"_"$arch".buildinfo "$changes")
cp "${files[@]}" "$out/"
for f in "${files[@]}"; do echo "$out/$(basename "$f")"; done

if [ $lintian = 1 ]; then
	# errors fail the build; warnings and notes are only shown
	lintian --fail-on error --suppress-tags-from-file /dev/null "$out/$(basename "$changes")" >&2 || {
		echo "build-deb.sh: lintian found errors (E: lines above)" >&2
		exit 1
	}
fi
