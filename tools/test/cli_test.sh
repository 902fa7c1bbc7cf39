#!/usr/bin/env bash
# Tests of the moba command, one group per ctest:
#   cli_test.sh GROUP MOBA NPY_CHECK NPY_FORGE GOLDEN_DIR WORK_DIR
# Groups: golden (attn round trip on every golden case), bad_files, bad_flags, route, demo, bench, decode, help.
# Every failure case asserts: exit status 2, exactly one line on stderr that names the problem, no
# output file (nor temporary) left behind, and no crash. Exit 0 = all passed, 1 = a failure, 77 = skipped.
set -u
group=$1 moba=$2 check=$3 forge=$4 golden=$5 work=$6
rm -rf "$work"
mkdir -p "$work/in" "$work/out"
pass=0 fail=0

ok() { pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
    exit $?
}

# expect_error NAME SUBSTRING CMD...: exit 2, one stderr line containing SUBSTRING, out/ left empty.
expect_error() {
    local name=$1 want=$2
    shift 2
    rm -rf "$work/out" && mkdir -p "$work/out"
    "$@" >"$work/stdout" 2>"$work/stderr"
    local rc=$? lines
    lines=$(wc -l <"$work/stderr")
    if [ "$rc" -ne 2 ]; then
        bad "$name: exit $rc, want 2 ($(head -c 300 "$work/stderr"))"
    elif [ "$lines" -ne 1 ]; then
        bad "$name: stderr has $lines lines, want 1: $(head -c 300 "$work/stderr")"
    elif ! grep -qF -- "$want" "$work/stderr"; then
        bad "$name: message '$(cat "$work/stderr")' does not contain '$want'"
    elif [ -n "$(ls -A "$work/out")" ]; then
        bad "$name: left files behind: $(ls -A "$work/out")"
    else
        ok
    fi
}

# expect_ok NAME CMD...: exit 0
expect_ok() {
    local name=$1
    shift
    "$@" >"$work/stdout" 2>"$work/stderr"
    local rc=$?
    if [ "$rc" -ne 0 ]; then bad "$name: exit $rc: $(head -c 400 "$work/stderr")"; else ok; fi
}

# a json value from case.json: json_field FILE KEY
json_field() { tr -d ' \n' <"$1" | sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p"; }

# small valid inputs: q [6, 2, 8], k/v [6, 1, 8], two sequences 0..2..6, do like q
make_inputs() {
    local i=$work/in
    "$forge" valid "$i/q.npy" "<f4" 6 2 8 && "$forge" valid "$i/k.npy" "<f4" 6 1 8 &&
        "$forge" valid "$i/v.npy" "<f4" 6 1 8 && "$forge" valid "$i/do.npy" "<f4" 6 2 8 &&
        "$forge" ints "$i/cu.npy" 0 2 6 || { echo "cannot make inputs"; exit 1; }
}

case $group in
golden)
    [ -d "$golden" ] || { echo "no golden cases at $golden: skipped"; exit 77; }
    n=0
    for dir in "$golden"/*/; do
        [ -f "$dir/case.json" ] || continue
        name=$(basename "$dir")
        n=$((n + 1))
        block=$(json_field "$dir/case.json" block)
        topk=$(json_field "$dir/case.json" topk)
        dtype=$(json_field "$dir/case.json" dtype)
        case $dtype in
        float32) tol_o=1e-5 tol_g=1e-5 ;;
        float16) tol_o=2e-3 tol_g=4e-3 ;;
        bfloat16) tol_o=1.5e-2 tol_g=2.5e-2 ;;
        *) bad "$name: unknown dtype '$dtype'"; continue ;;
        esac
        out=$work/out/$name
        mkdir -p "$out"
        expect_ok "$name attn" "$moba" attn --q "$dir/q.npy" --k "$dir/k.npy" --v "$dir/v.npy" \
            --cu-seqlens "$dir/cu_seqlens.npy" --block-size "$block" --top-k "$topk" --out "$out/o.npy" \
            --lse "$out/lse.npy" --do "$dir/do.npy" --dq "$out/dq.npy" --dk "$out/dk.npy" --dv "$out/dv.npy"
        for t in o dq dk dv; do
            tol=$tol_g
            [ $t = o ] && tol=$tol_o
            if "$check" close "$dir/$t.npy" "$out/$t.npy" "$tol"; then ok; else bad "$name: $t"; fi
        done
        # lse: float32 [Hq, total]
        total=$(tr -d ' \n' <"$dir/case.json" | sed -n 's/.*"seqlens":\[\([0-9,]*\)\].*/\1/p' | tr ',' '\n' | awk '{s += $1} END {print s}')
        hq=$(json_field "$dir/case.json" hq)
        if "$check" shape "$out/lse.npy" "<f4" "$hq" "$total"; then ok; else bad "$name: lse shape"; fi
        # forward alone gives the same o; one thread gives the same bits as the default
        expect_ok "$name attn forward, 1 thread" "$moba" attn --q "$dir/q.npy" --k "$dir/k.npy" --v "$dir/v.npy" \
            --cu-seqlens "$dir/cu_seqlens.npy" --block-size "$block" --top-k "$topk" --out "$out/o1.npy" --threads 1
        if "$check" same "$out/o.npy" "$out/o1.npy"; then ok; else bad "$name: o differs with --threads 1"; fi
    done
    [ "$n" -gt 0 ] || { echo "no golden cases in $golden: skipped"; exit 77; }
    ;;

bad_files)
    make_inputs
    i=$work/in
    attn() { "$moba" attn --q "$1" --k "$2" --v "$3" --cu-seqlens "$4" --block-size 2 --top-k 2 --out "$work/out/o.npy" "${@:5}"; }
    for kind in empty short text magic version descr_f8 big_endian fortran truncated_header truncated_data \
        long_data huge_dims negative_dim not_dict; do
        "$forge" $kind "$i/bad_$kind.npy" || { bad "forge $kind"; continue; }
        expect_error "q $kind" "--q $i/bad_$kind.npy:" attn "$i/bad_$kind.npy" "$i/k.npy" "$i/v.npy" "$i/cu.npy"
    done
    expect_error "k truncated" "--k $i/bad_truncated_data.npy: truncated data" attn "$i/q.npy" "$i/bad_truncated_data.npy" "$i/v.npy" "$i/cu.npy"
    expect_error "v fortran" "--v $i/bad_fortran.npy: fortran_order" attn "$i/q.npy" "$i/k.npy" "$i/bad_fortran.npy" "$i/cu.npy"
    expect_error "cu bad magic" "--cu-seqlens $i/bad_magic.npy: bad magic" attn "$i/q.npy" "$i/k.npy" "$i/v.npy" "$i/bad_magic.npy"
    expect_error "do long" "--do $i/bad_long_data.npy: file is longer" attn "$i/q.npy" "$i/k.npy" "$i/v.npy" "$i/cu.npy" \
        --do "$i/bad_long_data.npy" --dq "$work/out/dq.npy" --dk "$work/out/dk.npy" --dv "$work/out/dv.npy"
    expect_error "missing file" "--q $i/nope.npy: cannot open" attn "$i/nope.npy" "$i/k.npy" "$i/v.npy" "$i/cu.npy"
    expect_error "directory" "--k $i:" attn "$i/q.npy" "$i" "$i/v.npy" "$i/cu.npy"
    expect_error "descr message" "unsupported descr '<f8'" attn "$i/bad_descr_f8.npy" "$i/k.npy" "$i/v.npy" "$i/cu.npy"
    expect_error "huge message" "2^40" attn "$i/bad_huge_dims.npy" "$i/k.npy" "$i/v.npy" "$i/cu.npy"
    # well-formed files of the wrong kind
    "$forge" zero_tokens "$i/zero.npy" && "$forge" two_dims "$i/two.npy"
    expect_error "q with 0 tokens" "every size >= 1" attn "$i/zero.npy" "$i/k.npy" "$i/v.npy" "$i/cu.npy"
    expect_error "q 2-D" "--q $i/two.npy: shape (4, 16)" attn "$i/two.npy" "$i/k.npy" "$i/v.npy" "$i/cu.npy"
    expect_error "route bad q" "--q $i/bad_fortran.npy" "$moba" route --q "$i/bad_fortran.npy" --k "$i/k.npy" \
        --cu-seqlens "$i/cu.npy" --block-size 2 --top-k 2 --out "$work/out/idx.npy"
    ;;

bad_flags)
    make_inputs
    i=$work/in
    o=$work/out
    base=(--q "$i/q.npy" --k "$i/k.npy" --v "$i/v.npy" --cu-seqlens "$i/cu.npy")
    run() { "$moba" attn "${base[@]}" --out "$o/o.npy" "$@"; }
    expect_error "unknown flag" "unknown flag '--foo'" run --block-size 2 --top-k 2 --foo 1
    expect_error "missing value" "--top-k needs a value" run --block-size 2 --top-k
    expect_error "value is a flag" "--block-size needs a value" run --block-size --top-k 2
    expect_error "non-numeric" "--block-size wants an integer, got 'abc'" run --block-size abc --top-k 2
    expect_error "not an integer" "--top-k wants an integer, got '2.5'" run --block-size 2 --top-k 2.5
    expect_error "negative block" "--block-size must be in [1," run --block-size -3 --top-k 2
    expect_error "zero top-k" "--top-k must be in [1," run --block-size 2 --top-k 0
    expect_error "huge block" "--block-size must be in" run --block-size 99999999999 --top-k 2
    expect_error "given twice" "--top-k is given twice" run --block-size 2 --top-k 2 --top-k 3
    expect_error "stray argument" "unexpected argument 'extra'" run --block-size 2 --top-k 2 extra
    expect_error "missing --out" "missing --out" "$moba" attn "${base[@]}" --block-size 2 --top-k 2
    expect_error "missing --q" "missing --q" "$moba" attn --k "$i/k.npy" --v "$i/v.npy" --cu-seqlens "$i/cu.npy" --block-size 2 --top-k 2 --out "$o/o.npy"
    expect_error "empty value" "--out needs a non-empty value" "$moba" attn "${base[@]}" --block-size 2 --top-k 2 --out=
    expect_error "scale 0" "--softmax-scale must be > 0" run --block-size 2 --top-k 2 --softmax-scale 0
    expect_error "scale negative" "--softmax-scale must be in" run --block-size 2 --top-k 2 --softmax-scale -1
    expect_error "scale nan" "--softmax-scale wants a finite number" run --block-size 2 --top-k 2 --softmax-scale nan
    expect_error "threads negative" "--threads must be in" run --block-size 2 --top-k 2 --threads -1
    expect_error "bad device" "--device must be cpu or cuda" run --block-size 2 --top-k 2 --device gpu
    expect_error "do without grads" "--do needs all of --dq, --dk and --dv" run --block-size 2 --top-k 2 --do "$i/do.npy" --dq "$o/dq.npy"
    expect_error "grads without do" "need --do" run --block-size 2 --top-k 2 --dq "$o/dq.npy" --dk "$o/dk.npy" --dv "$o/dv.npy"
    expect_error "same output twice" "--out and --dq name the same file" run --block-size 2 --top-k 2 --do "$i/do.npy" \
        --dq "$o/o.npy" --dk "$o/dk.npy" --dv "$o/dv.npy"
    expect_error "unwritable output" "$work/nodir/o.npy" "$moba" attn "${base[@]}" --block-size 2 --top-k 2 --out "$work/nodir/o.npy"
    expect_error "one output unwritable" "$work/nodir/dv.npy" run --block-size 2 --top-k 2 --lse "$o/lse.npy" --do "$i/do.npy" \
        --dq "$o/dq.npy" --dk "$o/dk.npy" --dv "$work/nodir/dv.npy"
    if "$moba" --version | grep -q "cuda: not built"; then
        expect_error "cuda not built" "--device cuda: not built with CUDA" run --block-size 2 --top-k 2 --device cuda
    elif "$moba" --version | grep -q "cuda: built, no usable"; then
        expect_error "cuda absent" "--device cuda: no usable CUDA device" run --block-size 2 --top-k 2 --device cuda
    fi
    # inputs that disagree with each other
    "$forge" valid "$i/k5.npy" "<f4" 5 1 8 && "$forge" valid "$i/k_d4.npy" "<f4" 6 1 4 &&
        "$forge" valid "$i/k3.npy" "<f4" 6 3 8 && "$forge" valid "$i/v2.npy" "<f4" 6 2 8 &&
        "$forge" valid "$i/k_bf16.npy" "<u2" 6 1 8 && "$forge" valid "$i/cu_f4.npy" "<f4" 3 &&
        "$forge" ints "$i/cu_short.npy" 0 2 5 && "$forge" ints "$i/cu_start.npy" 1 2 6 &&
        "$forge" ints "$i/cu_down.npy" 0 4 2 6 && "$forge" valid "$i/q_i4.npy" "<i4" 6 2 8 &&
        "$forge" valid "$i/do3.npy" "<f4" 6 3 8 && "$forge" valid "$i/cu2d.npy" "<i4" 1 3 &&
        "$forge" valid "$i/q_d300.npy" "<f4" 6 1 300 && "$forge" valid "$i/k_d300.npy" "<f4" 6 1 300 ||
        { echo "cannot make inputs"; exit 1; }
    mix() { "$moba" attn --block-size 2 --top-k 2 --out "$o/o.npy" "$@"; }
    expect_error "k tokens" "--k $i/k5.npy: shape (5, 1, 8) has 5 tokens, q has 6" mix --q "$i/q.npy" --k "$i/k5.npy" --v "$i/v.npy" --cu-seqlens "$i/cu.npy"
    expect_error "k head_dim" "has head_dim 4, q has 8" mix --q "$i/q.npy" --k "$i/k_d4.npy" --v "$i/v.npy" --cu-seqlens "$i/cu.npy"
    expect_error "heads not a multiple" "3 kv heads do not divide q's 2 heads" mix --q "$i/q.npy" --k "$i/k3.npy" --v "$i/v.npy" --cu-seqlens "$i/cu.npy"
    expect_error "v heads" "--v $i/v2.npy: 2 heads, k has 1" mix --q "$i/q.npy" --k "$i/k.npy" --v "$i/v2.npy" --cu-seqlens "$i/cu.npy"
    expect_error "dtype mismatch" "dtype <u2 does not match q's <f4" mix --q "$i/q.npy" --k "$i/k_bf16.npy" --v "$i/v.npy" --cu-seqlens "$i/cu.npy"
    expect_error "q int32" "dtype <i4 is not a storage dtype" mix --q "$i/q_i4.npy" --k "$i/k.npy" --v "$i/v.npy" --cu-seqlens "$i/cu.npy"
    expect_error "cu not int32" "dtype <f4, want <i4" mix --q "$i/q.npy" --k "$i/k.npy" --v "$i/v.npy" --cu-seqlens "$i/cu_f4.npy"
    expect_error "cu 2-D" "want 1-D" mix --q "$i/q.npy" --k "$i/k.npy" --v "$i/v.npy" --cu-seqlens "$i/cu2d.npy"
    expect_error "cu total" "last entry is 5, q has 6 tokens" mix --q "$i/q.npy" --k "$i/k.npy" --v "$i/v.npy" --cu-seqlens "$i/cu_short.npy"
    expect_error "cu start" "first entry is 1" mix --q "$i/q.npy" --k "$i/k.npy" --v "$i/v.npy" --cu-seqlens "$i/cu_start.npy"
    expect_error "cu decreasing" "entry 2 (2) is below entry 1 (4)" mix --q "$i/q.npy" --k "$i/k.npy" --v "$i/v.npy" --cu-seqlens "$i/cu_down.npy"
    expect_error "do heads" "--do $i/do3.npy: 3 heads, q has 2" mix --q "$i/q.npy" --k "$i/k.npy" --v "$i/v.npy" --cu-seqlens "$i/cu.npy" \
        --do "$i/do3.npy" --dq "$o/dq.npy" --dk "$o/dk.npy" --dv "$o/dv.npy"
    # the library refuses it (head_dim above the CPU's 256): still exit 2, one line, nothing written
    expect_error "library refuses" "head_dim" mix --q "$i/q_d300.npy" --k "$i/k_d300.npy" --v "$i/k_d300.npy" --cu-seqlens "$i/cu.npy"
    # commands
    expect_error "unknown command" "unknown command 'frobnicate'" "$moba" frobnicate
    expect_error "demo bad flag" "--needle-snr wants a finite number" "$moba" demo --needle-snr x
    expect_error "demo too short" "must hold at least 3 blocks" "$moba" demo --seqlen 100 --block-size 64
    expect_error "demo bad dtype" "--dtype must be" "$moba" demo --dtype f64
    expect_error "demo svg unwritable" "--svg $work/nodir/r.svg" "$moba" demo --seqlen 768 --block-size 256 --svg "$work/nodir/r.svg"
    expect_error "bench bad list" "--lengths: list item 'x' is not an integer" "$moba" bench --lengths 128,x
    expect_error "bench kv heads" "--heads (3) must be a multiple of --kv-heads (2)" "$moba" bench --heads 3 --kv-heads 2
    "$moba" >/dev/null 2>&1
    if [ $? -eq 2 ]; then ok; else bad "no command: exit status is not 2"; fi
    ;;

route)
    make_inputs
    i=$work/in
    o=$work/out
    expect_ok "route" "$moba" route --q "$i/q.npy" --k "$i/k.npy" --cu-seqlens "$i/cu.npy" --block-size 2 --top-k 2 --out "$o/idx.npy"
    if "$check" shape "$o/idx.npy" "<i4" 2 6 2; then ok; else bad "route shape"; fi
    if "$check" route "$o/idx.npy" "$i/cu.npy" 2 2; then ok; else bad "route validity"; fi
    expect_error "route top-k too large" "would be over 2^32 entries" "$moba" route --q "$i/q.npy" --k "$i/k.npy" \
        --cu-seqlens "$i/cu.npy" --block-size 2 --top-k 2000000000 --out "$o/idx.npy"
    expect_error "route no --top-k" "missing --top-k" "$moba" route --q "$i/q.npy" --k "$i/k.npy" --cu-seqlens "$i/cu.npy" --block-size 2 --out "$o/idx.npy"
    if [ -d "$golden" ]; then
        for dir in "$golden"/*/; do
            [ -f "$dir/case.json" ] || continue
            name=$(basename "$dir")
            block=$(json_field "$dir/case.json" block)
            topk=$(json_field "$dir/case.json" topk)
            expect_ok "$name route" "$moba" route --q "$dir/q.npy" --k "$dir/k.npy" --cu-seqlens "$dir/cu_seqlens.npy" \
                --block-size "$block" --top-k "$topk" --out "$o/$name.npy"
            if "$check" route "$o/$name.npy" "$dir/cu_seqlens.npy" "$block" "$topk"; then ok; else bad "$name route validity"; fi
        done
    fi
    ;;

demo)
    # a small demo: the report's numbers must be sane, and MoBA with every block must equal full attention
    expect_ok "demo" "$moba" demo --seqlen 2048 --block-size 128 --heads 2 --head-dim 32 --needles 16 --device cpu --svg "$work/out/r.svg"
    cp "$work/stdout" "$work/report.txt"
    cat "$work/report.txt"
    field() { awk -v k="$1" '$1 == k {print $2}' "$work/report.txt"; }
    needle_err=$(awk '$1 == "error" && $2 == "needle" {print $3}' "$work/report.txt")
    found_err=$(sed -n 's/.*found \([^,]*\),.*/\1/p' "$work/report.txt")
    all_err=$(awk '$1 == "error" && $2 == "all" {print $3}' "$work/report.txt")
    awk -v r="$(field recall)" -v s="$(field sparsity)" -v sp="$(field speedup | tr -d x)" -v ne="$needle_err" \
        -v fe="$found_err" -v ae="$all_err" 'BEGIN {
            bad = !(r >= 0 && r <= 1) || !(s > 0 && s < 1) || !(sp > 0) || !(ne >= 0 && ne < 10) || !(ae >= 0 && ae < 10);
            bad = bad || !(r >= 0.5) || !(fe < 1e-2);   # the default strengths are found mostly, and a found needle is exact
            exit bad }' && ok || bad "demo numbers: recall '$(field recall)' sparsity '$(field sparsity)' speedup '$(field speedup)' errors '$needle_err' '$found_err' '$all_err'"
    if head -c 100 "$work/out/r.svg" | grep -q "<svg" && tail -c 20 "$work/out/r.svg" | grep -q "</svg>" &&
        grep -q "query block j" "$work/out/r.svg" && grep -q "key block i" "$work/out/r.svg"; then ok; else bad "svg"; fi
    # top_k >= number of blocks: MoBA is full attention, so the error is exactly 0 and every needle is found
    expect_ok "demo full" "$moba" demo --seqlen 1024 --block-size 128 --top-k 8 --heads 1 --head-dim 16 --needles 4 --device cpu
    if grep -q "recall       1.0000" "$work/stdout" && grep -q "error all    0.000e+00" "$work/stdout"; then ok; else bad "demo with top_k = blocks: $(cat "$work/stdout")"; fi
    ;;

bench)
    expect_ok "bench" "$moba" bench --lengths 256,512 --heads 1 --head-dim 16 --block-size 64 --top-k 2 --device cpu --json "$work/out/b.json"
    rows=$(awk '$1 == 256 || $1 == 512' "$work/stdout" | wc -l)
    [ "$rows" -eq 2 ] && ok || bad "bench table has $rows rows: $(cat "$work/stdout")"
    grep -q "\[2/2\] N=512" "$work/stderr" && ok || bad "bench progress: $(cat "$work/stderr")"
    if command -v python3 >/dev/null; then
        python3 -c 'import json, sys, math
d = json.load(open(sys.argv[1]))
r = d["results"]
assert [x["seqlen"] for x in r] == [256, 512], r
assert all(x[k] > 0 and math.isfinite(x[k]) for x in r for k in ("moba_fwd_s", "full_fwd_s", "moba_fwd_bwd_s", "full_fwd_bwd_s")), r' \
            "$work/out/b.json" && ok || bad "bench json"
    else
        grep -q '"seqlen": 512' "$work/out/b.json" && ok || bad "bench json"
    fi
    expect_ok "bench forward only" "$moba" bench --lengths 300 --heads 2 --kv-heads 1 --head-dim 8 --block-size 32 --forward-only --device cpu
    grep -q "f+b" "$work/stdout" && bad "bench --forward-only shows backward columns" || ok
    ;;

decode)
    # small caches: contiguous f32 (GQA), paged bf16 with a partly used last page, f16 MHA with B = 7
    expect_ok "decode-bench" "$moba" decode-bench --contexts 1000,5000 --batch 3 --heads 4 --kv-heads 2 --head-dim 32 \
        --block-size 64 --top-k 4 --dtype f32 --reps 2 --device cpu --json "$work/out/d.json"
    cat "$work/stdout"
    grep -q "\[2/2\] context 5000: MoBA" "$work/stderr" && ok || bad "decode-bench progress: $(cat "$work/stderr")"
    # rows: context attended bound | full ms full tok/s | moba ms moba tok/s | speedup; attended keys at t = context - 1
    check_decode_rows() { # B top_k contexts...
        local B=$1 K=$2
        shift 2
        for ctx in "$@"; do
            awk -v c="$ctx" -v B="$B" -v K="$K" '$1 == c {
                t = c - 1; j = int(t / B); h = (K - 1 < j) ? K - 1 : j; want = h * B + t % B + 1
                bound = $3; sub(/x$/, "", bound); sp = $11; sub(/x$/, "", sp)
                found = 1
                if ($2 != want || (bound - c / want) ^ 2 > 0.01 || !(bound >= 1) || !($5 > 0) || !($6 > 0) ||
                    !($8 > 0) || !($9 > 0) || !(sp > 0)) { print "bad row: " $0 " (want attended " want ")"; exit 1 }
            } END { if (!found) { print "no row for context " c; exit 1 } }' "$work/stdout" && ok || bad "decode-bench row $ctx"
        done
    }
    check_decode_rows 64 4 1000 5000
    if command -v python3 >/dev/null; then
        python3 -c 'import json, sys, math
d = json.load(open(sys.argv[1]))
assert (d["batch"], d["heads"], d["kv_heads"], d["block_size"], d["top_k"], d["page_size"]) == (3, 4, 2, 64, 4, 0), d
r = d["results"]
assert [(x["context"], x["attended_keys"]) for x in r] == [(1000, 232), (5000, 200)], r
for x in r:
    assert all(x[k] > 0 and math.isfinite(x[k]) for k in ("full_s", "moba_s", "full_tokens_per_s", "moba_tokens_per_s", "speedup")), x
    assert abs(x["moba_tokens_per_s"] - 3 / x["moba_s"]) < 1e-3 * x["moba_tokens_per_s"], x
    assert abs(x["speedup"] - x["full_s"] / x["moba_s"]) < 1e-3 * x["speedup"] and x["bound"] >= 1, x' \
            "$work/out/d.json" && ok || bad "decode-bench json"
    else
        grep -q '"attended_keys": 200' "$work/out/d.json" && ok || bad "decode-bench json"
    fi
    expect_ok "decode-bench paged" "$moba" decode-bench --contexts 1000,77 --batch 2 --heads 2 --kv-heads 1 --head-dim 16 \
        --block-size 32 --top-k 3 --page-size 8 --dtype bf16 --reps 1 --threads 1
    grep -q "pages of 8" "$work/stdout" && ok || bad "decode-bench paged header: $(head -1 "$work/stdout")"
    check_decode_rows 32 3 1000 77
    expect_ok "decode-bench f16 B=7" "$moba" decode-bench --contexts 100,1 --batch 1 --heads 1 --kv-heads 1 --head-dim 8 \
        --block-size 7 --top-k 2 --dtype f16 --reps 1
    check_decode_rows 7 2 100 1
    # bad flags: exit 2, one line, nothing written
    d() { "$moba" decode-bench --contexts 64 --batch 1 --heads 1 --head-dim 8 --block-size 16 --reps 1 "$@"; }
    expect_error "decode unknown flag" "unknown flag '--ctx'" d --ctx 5
    expect_error "decode bad list" "--contexts: list item 'x' is not an integer" "$moba" decode-bench --contexts 64,x
    expect_error "decode zero context" "--contexts: " "$moba" decode-bench --contexts 0
    expect_error "decode kv heads" "--heads (3) must be a multiple of --kv-heads (2)" "$moba" decode-bench --heads 3 --kv-heads 2
    expect_error "decode page size" "--page-size (3) must divide --block-size (16)" d --page-size 3
    expect_error "decode negative page" "--page-size must be in" d --page-size -1
    expect_error "decode zero batch" "--batch must be in" "$moba" decode-bench --batch 0
    expect_error "decode zero reps" "--reps must be in" "$moba" decode-bench --reps 0
    expect_error "decode top-k 0" "--top-k must be in" d --top-k 0
    expect_error "decode head-dim" "--head-dim must be in" "$moba" decode-bench --head-dim 300
    expect_error "decode dtype" "--dtype must be" d --dtype f64
    expect_error "decode device" "--device must be cpu or cuda" d --device auto
    expect_error "decode too large" "over 2^33 elements" "$moba" decode-bench --contexts 1073741824 --batch 64
    expect_error "decode given twice" "--batch is given twice" d --batch 2
    expect_error "decode json unwritable" "--json $work/nodir/d.json" d --json "$work/nodir/d.json"
    if "$moba" --version | grep -q "cuda: not built"; then
        expect_error "decode cuda not built" "--device cuda: not built with CUDA" d --device cuda
    elif "$moba" --version | grep -q "cuda: built, no usable"; then
        expect_error "decode cuda absent" "--device cuda: no usable CUDA device" d --device cuda
    else # a GPU: runs once the CUDA backend decodes; until then the library's UNSUPPORTED, exit 2
        "$moba" decode-bench --contexts 64 --batch 1 --heads 1 --head-dim 64 --block-size 16 --reps 1 --device cuda \
            >"$work/stdout" 2>"$work/stderr"
        rc=$?
        if [ $rc -eq 0 ] || { [ $rc -eq 2 ] && grep -q "no decode path" "$work/stderr"; }; then ok; else bad "decode cuda: exit $rc: $(cat "$work/stderr")"; fi
    fi
    ;;

help)
    expect_ok "moba --help" "$moba" --help
    for c in demo attn route bench decode-bench; do grep -q "^  $c " "$work/stdout" && ok || bad "--help lacks $c"; done
    expect_ok "moba --version" "$moba" --version
    grep -q "^libmoba " "$work/stdout" && ok || bad "--version"
    flags_attn="--q --k --v --cu-seqlens --block-size --top-k --out --lse --do --dq --dk --dv --softmax-scale --device --threads"
    flags_route="--q --k --cu-seqlens --block-size --top-k --out --device --threads"
    flags_demo="--seqlen --heads --head-dim --block-size --top-k --needles --needle-snr --locality --seed --device --dtype --threads --svg"
    flags_bench="--lengths --heads --kv-heads --head-dim --block-size --top-k --reps --forward-only --device --dtype --threads --seed --json"
    flags_decode_bench="--contexts --batch --heads --kv-heads --head-dim --block-size --top-k --page-size --dtype --reps --device --threads --seed --json"
    for c in attn route demo bench decode-bench; do
        expect_ok "$c --help" "$moba" $c --help
        eval "flags=\$flags_${c//-/_}"
        for f in $flags; do grep -q -- "^  $f\b" "$work/stdout" && ok || bad "$c --help lacks $f"; done
        expect_ok "help $c" "$moba" help $c
    done
    ;;

*)
    echo "unknown group $group"
    exit 2
    ;;
esac
finish
