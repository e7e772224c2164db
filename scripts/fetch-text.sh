#!/usr/bin/env bash
# Fetches the English text for calibration and evaluation (`slate eval ppl`, `slate compress`) into
# data/text/: calib.txt and eval.txt, disjoint.
#
# The text is the reStructuredText sources of the Python 3.11 documentation, shipped in Debian's
# package python3.11-doc (usr/share/doc/python3.11/html/_sources/; licence: PSF License Version 2,
# usr/share/doc/python3.11-doc/copyright in the package). eval.txt is the tutorial and the FAQ
# (about 0.5 MB, prose with code examples); calib.txt is the HOWTOs and the language reference
# (about 1.2 MB). Each is the files' text in byte order of their paths, separated by blank lines.
# Idempotent: does nothing when both files are there. Written under temporary names and renamed, so
# an interrupted run leaves nothing half-written. data/text/SOURCE names the package version used.
#
# Env: SLATE_DATA_DIR (default <repo>/data).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${SLATE_DATA_DIR:-$ROOT/data}/text"
PACKAGE=python3.11-doc

if [[ -s "$DEST/calib.txt" && -s "$DEST/eval.txt" ]]; then
    echo "text already present: $DEST"
    exit 0
fi
mkdir -p "$DEST"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt-get download runs as the user, into the current directory; refresh the lists once if the
# package is not in them.
(cd "$work" && { apt-get download -qq "$PACKAGE" 2>/dev/null || { apt-get update -qq && apt-get download -qq "$PACKAGE"; }; })
deb="$(ls "$work"/*.deb)"
dpkg-deb -x "$deb" "$work/root"
src="$work/root/usr/share/doc/python3.11/html/_sources"
[[ -d "$src/tutorial" && -d "$src/faq" && -d "$src/howto" && -d "$src/reference" ]] \
    || { echo "fetch-text: error: $deb has no documentation sources under $src" >&2; exit 1; }

concat() {  # concat OUT DIR... — the .rst.txt files under the DIRs, in byte order, blank-line separated
    local out="$1"
    shift
    : > "$out"
    (cd "$src" && find "$@" -name '*.rst.txt' | LC_ALL=C sort) | while read -r f; do
        cat "$src/$f" >> "$out"
        printf '\n\n' >> "$out"
    done
}
concat "$DEST/eval.txt.tmp" tutorial faq
concat "$DEST/calib.txt.tmp" howto reference
dpkg-deb -f "$deb" Package Version > "$DEST/SOURCE"
echo "licence: PSF License Version 2 (usr/share/doc/python3.11-doc/copyright in the package)" >> "$DEST/SOURCE"
mv "$DEST/eval.txt.tmp" "$DEST/eval.txt"
mv "$DEST/calib.txt.tmp" "$DEST/calib.txt"
echo "wrote $DEST/eval.txt ($(wc -c < "$DEST/eval.txt") bytes) and $DEST/calib.txt ($(wc -c < "$DEST/calib.txt") bytes) from $(tr '\n' ' ' < "$DEST/SOURCE" | cut -c1-60)"
