#!/bin/sh
# Run one Orderflow process by name: the image's ENTRYPOINT, used by deploy/k8s and docker-compose.yml.
#
#   orchestrator | inventory | payment | orders | notify   the five processes (python -m ...)
#   migrate [orderctl migrate options]                     `orderctl migrate`, retried until the database
#                                                          answers (MIGRATE_TIMEOUT_SECONDS, default 600)
#   stripe-server | smtp-sink | sms-server [options]       the development servers
#   orderctl [arguments]                                   any other orderctl command
set -eu

usage() {
    echo "usage: entrypoint.sh NAME [ARGS]: orchestrator, inventory, payment, orders, notify, migrate," >&2
    echo "       stripe-server, smtp-sink, sms-server or orderctl" >&2
}

[ $# -ge 1 ] || { usage; exit 64; }
name=$1
shift
case "$name" in
    orchestrator)
        exec python -m orchestrator "$@" ;;
    inventory | payment | orders | notify)
        exec python -m "services.$name" "$@" ;;
    stripe-server)
        exec python -m devservers.stripe_server "$@" ;;
    smtp-sink)
        exec python -m devservers.smtp_sink "$@" ;;
    sms-server)
        exec python -m devservers.sms_server "$@" ;;
    orderctl)
        exec orderctl "$@" ;;
    migrate)
        # Before the database server, a role or a database exists (first install: the operator is still
        # creating the cluster, or the migrations Job has not provisioned the role yet), migrate fails: retry.
        deadline=$(( $(date +%s) + ${MIGRATE_TIMEOUT_SECONDS:-600} ))
        delay=1
        until orderctl migrate "$@"; do
            if [ "$(date +%s)" -ge "$deadline" ]; then
                echo "migrate: giving up after ${MIGRATE_TIMEOUT_SECONDS:-600}s" >&2
                exit 1
            fi
            echo "migrate: not possible yet, retrying in ${delay}s" >&2
            sleep "$delay"
            delay=$(( delay < 10 ? delay * 2 : 10 ))
        done ;;
    help | -h | --help)
        usage ;;
    *)
        usage
        exit 64 ;;
esac
