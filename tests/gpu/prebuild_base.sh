#!/bin/bash
# Build libmoba.so of another commit (default HEAD, i.e. the version before the uncommitted change) on
# this machine into .ablib/<commit>/ (.gitignore excludes it), for bench/gpu/ab.py's LIB= sets: the
# previous version timed side by side with the current one in one device call. Carry .ablib with the
# call (`carry: [".ablib", ...]`); the set is then "LIB=.ablib/<commit>/libmoba.so".
#   bash tests/gpu/prebuild_base.sh [commit]
set -eu
ROOT=$(pwd)
rev=$(git rev-parse --short "${1:-HEAD}")
WT=/tmp/moba-base-$rev
rm -rf "$WT" && git worktree prune && git worktree add -q --detach "$WT" "$rev"
(cd "$WT" && bash tests/gpu/prebuild.sh moba_shared > /dev/null)
rm -rf "$ROOT/.ablib/$rev" && mkdir -p "$ROOT/.ablib/$rev"
cp -a "$WT/.prebuilt/build/"libmoba.so* "$ROOT/.ablib/$rev/"
git worktree remove --force "$WT"
echo ".ablib/$rev/libmoba.so"
