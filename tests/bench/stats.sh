# What the benchmark scripts share to report: sourced, not run.

# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The requests/s table of a three-way run and its ratios: the medians of the arrays `none`,
# `empty` and `with`, the empty-probe row labelled $1.
three_way_table() {
  local n e w
  n=$(printf '%s\n' "${none[@]}" | median)
  e=$(printf '%s\n' "${empty[@]}" | median)
  w=$(printf '%s\n' "${with[@]}" | median)
  printf '%-26s %12s\n' "setup" "requests/s"
  printf '%-26s %12s\n' "no probes" "$n" "$1" "$e" "sightline" "$w"
  awk -v n="$n" -v e="$e" -v w="$w" 'BEGIN {
    printf "with/empty-probe  %.3f\nwith/none         %.3f\nempty/none        %.3f\n", w/e, w/n, e/n }'
}
