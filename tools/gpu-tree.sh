#!/usr/bin/env bash
# A device call carries the tracked tree and what `carry` names, 64 MiB in all: the tracked
# tree is ~39 MB (test fixtures, mostly slides) and the GPU bundle (.gpu/) ~50 MB. The GPU
# check needs of the fixtures only tests/fixtures/pytorch, so for the calls:
#
#   bash tools/gpu-tree.sh lean      # the other fixture folders leave git's index (the files stay)
#   ...device calls, carry [".gpu"]...
#   bash tools/gpu-tree.sh restore   # the index as HEAD has it again
#
# Only the index changes (and .git/info/exclude, so that the untracked folders are ignored,
# not sent): no file is touched, and `restore` leaves uncommitted edits as they were.
set -euo pipefail
cd "$(dirname "$0")/.."
folders=(tests/fixtures/slides tests/fixtures/slides_more tests/fixtures/bad tests/fixtures/pipeline
  tests/fixtures/froc)
exclude=.git/info/exclude
begin="# tools/gpu-tree.sh lean: from here"
end="# tools/gpu-tree.sh lean: to here"
case "${1:-}" in
  lean)
    git diff --cached --quiet || { echo "the index holds staged changes: commit or unstage them first" >&2; exit 1; }
    git rm -r -q --cached "${folders[@]}"
    { echo "$begin"; printf '/%s/\n' "${folders[@]}"; echo "$end"; } >> "$exclude"
    ;;
  restore)
    sed -i "\\|^$begin\$|,\\|^$end\$|d" "$exclude"
    git reset -q
    ;;
  *) echo "usage: $0 lean|restore" >&2; exit 2 ;;
esac
echo "tracked: $(( $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1) / 1024 / 1024 )) MiB"
