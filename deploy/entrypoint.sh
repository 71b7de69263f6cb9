#!/bin/sh
# The container's entry point: one image, any role.
#
#   --role web      gunicorn with gunicorn.conf.py (the production web tier)
#   --role worker   a model worker
#   --role all      web + worker thread in one process (python run_keras_server.py)
#
# Every setting comes from the environment (settings.py); further arguments go to the program.
set -eu
role="${ROLE:-all}"
if [ "${1:-}" = "--role" ]; then
  role="$2"
  shift 2
fi
export ROLE="$role"
case "$role" in
  web) exec gunicorn -c gunicorn.conf.py "$@" "run_keras_server:create_app()" ;;
  worker | all) exec python run_keras_server.py --role "$role" "$@" ;;
  *) echo "unknown role '$role': use web, worker or all" >&2; exit 2 ;;
esac
