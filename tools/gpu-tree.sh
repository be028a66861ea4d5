#!/usr/bin/env bash
# A device call carries the tracked tree and what `carry` names, 64 MiB in all: the tracked
# tree is ~39 MB (test fixtures, mostly slides) and the GPU bundle (.gpu/) ~40 MB. The GPU
# check needs of the fixtures only tests/fixtures/pytorch and the demo slide with its mask and
# PyTorch's map of it (2.5 MB), so for the calls:
#
#   bash tools/gpu-tree.sh lean      # the other fixtures leave git's index (the files stay)
#   ...device calls, carry [".gpu"]...
#   bash tools/gpu-tree.sh restore   # the index as HEAD has it again
#
# Only the index changes (and .git/info/exclude, so that the untracked files are ignored,
# not sent): no file is touched, and `restore` leaves uncommitted edits as they were.
set -euo pipefail
cd "$(dirname "$0")/.."
folders=(tests/fixtures/slides tests/fixtures/slides_more tests/fixtures/bad tests/fixtures/pipeline
  tests/fixtures/froc)
kept=(tests/fixtures/pipeline/demo_vips_jpeg.tif tests/fixtures/pipeline/demo_mask.png
  tests/fixtures/pipeline/demo_ref_prob_overlap0.png)
exclude=.git/info/exclude
begin="# tools/gpu-tree.sh lean: from here"
end="# tools/gpu-tree.sh lean: to here"
case "${1:-}" in
  lean)
    git diff --cached --quiet || { echo "the index holds staged changes: commit or unstage them first" >&2; exit 1; }
    mapfile -t leaving < <(git ls-files "${folders[@]}" | grep -v -x -F "${kept[@]/#/-e}")
    git rm -q --cached "${leaving[@]}"
    { echo "$begin"; printf '/%s\n' "${leaving[@]}"; echo "$end"; } >> "$exclude"
    ;;
  restore)
    sed -i "\\|^$begin\$|,\\|^$end\$|d" "$exclude"
    git reset -q
    ;;
  *) echo "usage: $0 lean|restore" >&2; exit 2 ;;
esac
echo "tracked: $(( $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1) / 1024 / 1024 )) MiB"
