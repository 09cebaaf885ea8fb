#!/bin/sh
# The broker's start in docker-compose.yml: writes its definitions (users,
# vhost, permissions: rabbitmq/definitions.json) with the passwords of .env,
# readable by RabbitMQ only, then starts it as its image does.
set -eu
for name in RABBITMQ_APP_PASSWORD RABBITMQ_ADMIN_PASSWORD; do
    eval "value=\${$name:-}"
    case "$value" in
        '' | *[!A-Za-z0-9]*)
            echo "$name must be set in .env, to letters and digits only" >&2
            exit 2
            ;;
    esac
done
umask 077
sed -e "s/@RABBITMQ_APP_PASSWORD@/$RABBITMQ_APP_PASSWORD/" \
    -e "s/@RABBITMQ_ADMIN_PASSWORD@/$RABBITMQ_ADMIN_PASSWORD/" \
    /etc/cqrs-warehouse/definitions.json > /etc/rabbitmq/definitions.json
if [ "$(id -u)" = 0 ]; then chown rabbitmq:rabbitmq /etc/rabbitmq/definitions.json; fi
exec docker-entrypoint.sh rabbitmq-server
