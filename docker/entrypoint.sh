#!/bin/sh
# The PostgreSQL password comes from the compose secret file, never from the image, the study
# file or the command line: libpq reads PGPASSWORD from this process's environment only.
set -e
if [ -r /run/secrets/postgres_password ]; then
    PGPASSWORD="$(cat /run/secrets/postgres_password)"
    export PGPASSWORD
fi
exec autoslim "$@"
