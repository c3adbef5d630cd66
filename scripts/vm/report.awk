# report.awk: read the framed output of run-suites.sh, one file per kernel
# (.vm/logs/LABEL.results, the label is the file name), and print the
# table test x kernel -> PASS/FAIL/SKIP, then one line per kernel saying
# why it failed. Exits 1 when any kernel failed.
#
#	awk -f report.awk [-v md=1] [expected] LABEL.results...
#
# A file named "expected" lists "SUITE TestName" lines (from -test.list):
# the tests every kernel must run, so one that never started shows too.
#
# A test that started but printed no result (the binary crashed or timed
# out) is a FAIL; a test run on some kernel but not on another is "-" and
# fails that kernel; so do a non-zero exit of a test binary, a module that
# did not load, and a guest that never reached the end of the plan.

function addrow(r) {
	if (!(r in isrow)) {
		isrow[r] = 1
		rows[++nrows] = r
	}
}

function out(line) {
	sub(/ +$/, "", line)
	print line
}

function note(k, msg) {
	notes[k] = notes[k] (notes[k] == "" ? "" : "; ") msg
}

FILENAME ~ /(^|\/)expected$/ {
	if (NF == 2) addrow($1 "/" $2)
	next
}

FNR == 1 {
	k = FILENAME
	sub(/^.*\//, "", k)
	sub(/\.results$/, "", k)
	kernels[++nk] = k
	suite = ""
}

{ sub(/\r$/, "") }

/^@@xdpgate kernel / { release[k] = $3; next }
/^@@xdpgate module / { if ($4 != "ok") note(k, "module " $3 " did not load"); next }
/^@@xdpgate begin / { suite = $3; next }
/^@@xdpgate end / {
	rc = $4; sub(/^rc=/, "", rc)
	if (rc != 0) exitrc[k, suite] = rc
	suite = ""
	next
}
/^@@xdpgate done/ { done[k] = 1; next }
/^@@xdpgate boot / {
	rc = $3; sub(/^rc=/, "", rc)
	s = $4; sub(/^secs=/, "", s)
	secs[k] = s
	if (rc == 124 || rc == 137) note(k, "guest timed out after " s "s")
	else if (rc != 0) note(k, "qemu exited with " rc)
	next
}
/^@@xdpgate secs / { secs[k] = $3; next }
/^@@xdpgate fetch failed/ { note(k, "the kernel could not be fetched"); fetchfail[k] = 1; next }

suite != "" && /^=== RUN   (Test|Fuzz|Example)[^\/]*$/ {
	r = suite "/" $3
	addrow(r)
	started[k, r] = 1
	next
}
suite != "" && /^--- (PASS|FAIL|SKIP): (Test|Fuzz|Example)[^\/ ]* / {
	r = suite "/" $3
	addrow(r)
	st = $2; sub(/:$/, "", st)
	res[k, r] = st
	next
}

END {
	failed = 0
	for (i = 1; i <= nk; i++) {
		k = kernels[i]
		nfail[k] = 0
		for (j = 1; j <= nrows; j++) {
			r = rows[j]
			if ((k, r) in res) cell = res[k, r]
			else if ((k, r) in started) cell = "FAIL"
			else cell = "-"
			cells[k, r] = cell
			if (cell == "FAIL" || cell == "-") nfail[k]++
			if ((k, r) in started && !((k, r) in res)) note(k, r " printed no result (crash or timeout)")
		}
		if (!(k in release) && !(k in fetchfail)) note(k, "no output from the test runner")
		else if (!(k in done)) note(k, "the plan did not finish")
		for (key in exitrc) {
			split(key, p, SUBSEP)
			if (p[1] == k) note(k, p[2] " exited with " exitrc[key])
		}
		for (j = 1; j <= nrows; j++)
			if (cells[k, rows[j]] == "-") { note(k, "tests missing (\"-\")"); break }
		verdict[k] = (nfail[k] == 0 && notes[k] == "") ? "PASS" : "FAIL"
		if (verdict[k] == "FAIL") failed = 1
	}

	w = 4
	for (j = 1; j <= nrows; j++) if (length(rows[j]) > w) w = length(rows[j])
	for (i = 1; i <= nk; i++) { cw[i] = length(kernels[i]); if (cw[i] < 4) cw[i] = 4 }

	if (md) {
		line = "| test |"; sep = "|---|"
		for (i = 1; i <= nk; i++) { line = line " " kernels[i] " |"; sep = sep "---|" }
		print line; print sep
		for (j = 1; j <= nrows; j++) {
			line = "| " rows[j] " |"
			for (i = 1; i <= nk; i++) line = line " " cells[kernels[i], rows[j]] " |"
			print line
		}
		line = "| **result** |"
		for (i = 1; i <= nk; i++) line = line " **" verdict[kernels[i]] "** |"
		print line
	} else {
		line = sprintf("%-" w "s", "test")
		for (i = 1; i <= nk; i++) line = line sprintf("  %-" cw[i] "s", kernels[i])
		out(line)
		for (j = 1; j <= nrows; j++) {
			line = sprintf("%-" w "s", rows[j])
			for (i = 1; i <= nk; i++) line = line sprintf("  %-" cw[i] "s", cells[kernels[i], rows[j]])
			out(line)
		}
		line = sprintf("%-" w "s", "time (s)")
		for (i = 1; i <= nk; i++) line = line sprintf("  %-" cw[i] "s", (kernels[i] in secs) ? secs[kernels[i]] : "?")
		out(line)
		line = sprintf("%-" w "s", "result")
		for (i = 1; i <= nk; i++) line = line sprintf("  %-" cw[i] "s", verdict[kernels[i]])
		out(line)
	}
	print ""
	for (i = 1; i <= nk; i++) {
		k = kernels[i]
		printf "%s: %s, %s%s\n", k, (k in release) ? release[k] : "unknown kernel", verdict[k], notes[k] == "" ? "" : " (" notes[k] ")"
	}
	exit failed
}
