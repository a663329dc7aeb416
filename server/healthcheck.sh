#!/bin/bash
# Container health check: exit 0 when the app answers GET /healthz with 200, 1 otherwise.
# bash's /dev/tcp, no interpreter to start: Docker runs this every second in each app container,
# and a Python check (urllib) cost about 70 ms of CPU per run there, this one about 2 ms
# (BENCHMARK.md, "Where the CPU goes").
exec 3<>"/dev/tcp/127.0.0.1/${PORT:-8000}" 2>/dev/null || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: healthcheck\r\nConnection: close\r\n\r\n' >&3 || exit 1
IFS= read -r -t 1.5 line <&3 || exit 1
[[ $line =~ ^HTTP/1\.[01]\ 200[[:space:]] ]]
