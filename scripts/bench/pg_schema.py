#!/usr/bin/env python3
"""The chatcore-postgres migrations as one SQL script, to build a scratch database at a schema
version without building the crate (for pg_send_cpu.sh).
usage: pg_schema.py chatcore-postgres/src/schema.rs [VERSION] | psql -d DB -v ON_ERROR_STOP=1 -q

Reads the string literals of `MIGRATIONS` (escapes and line continuations as Rust reads them)
and prints each step of every migration up to VERSION (default: all), ';'-terminated. The
migrations table is not written: the database is for measuring, not for `migrate()`.
"""
import re, sys

src = open(sys.argv[1]).read()
upto = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 30
body = src[src.index('pub(crate) const MIGRATIONS'):src.index('/// The newest version this code knows.')]
parts = re.split(r'version:\s*(\d+),', body)
for i in range(1, len(parts), 2):
    version, text = int(parts[i]), parts[i + 1]
    if version > upto:
        break
    text = text[text.index('steps: &[') + len('steps: &['):]
    print(f'-- migration {version}')
    j = 0
    while j < len(text) and text[j] != ']':
        if text.startswith('//', j):
            j = text.index('\n', j)
        elif text[j] == '"':
            j += 1
            out = []
            while text[j] != '"':
                if text[j] == '\\':
                    if text[j + 1] == '\n':
                        j += 2
                        while text[j] in ' \t\n':
                            j += 1
                        continue
                    out.append({'n': '\n', 't': '\t', '"': '"', '\\': '\\', "'": "'"}[text[j + 1]])
                    j += 2
                else:
                    out.append(text[j])
                    j += 1
            j += 1
            print(''.join(out) + ';')
        else:
            j += 1
