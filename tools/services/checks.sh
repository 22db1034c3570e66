# Shared by the services' shell checks (lifecycle-test.sh, public-read-test.sh,
# reclaim-disk-test.sh). Source it: `check <description> <command...>` prints ok/FAIL and
# counts failures; `checks_done <name>` ends the script, non-zero when any failed.
failures=0
check() { # check <description> <command...>
  local what=$1; shift
  if "$@"; then echo "  ok    $what"; else echo "  FAIL  $what"; failures=$((failures + 1)); fi
}
checks_done() { # checks_done <name>
  if [[ $failures -gt 0 ]]; then echo "[$1] $failures check(s) failed"; exit 1; fi
  echo "[$1] all checks passed"
}
