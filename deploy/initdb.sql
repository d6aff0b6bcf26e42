-- Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d), by
-- psql as the superuser. One server, one database per role: the coordinators' shared log and
-- each participant service's own (the ledgers and the demo shop's orders, inventory, payments
-- and shipping).
--
-- Least privilege: each database is owned by a login role of its own (<db>_owner), which owns
-- nothing else and has no other attribute (not superuser, no CREATEDB, no CREATEROLE); nobody
-- else may even connect to it (CONNECT revoked from PUBLIC). The services and the migration job
-- connect as these owners, never as the superuser. Each password is read from the secrets file
-- compose mounts into this container (deploy/make_secrets.py writes them); none is in this file.
--
-- The schemas are created afterwards by the compose service `migrate` (txn migrate), as each
-- owner: Postgres 15 makes the owner of a database the owner of its `public` schema.

\set ON_ERROR_STOP on

-- Refuses an empty or short password (a missing secrets file): the role could not log in.
CREATE FUNCTION pg_temp.require_password(password text, file text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF length(coalesce(password, '')) < 16 THEN
        RAISE EXCEPTION 'deploy/initdb.sql: % is missing or shorter than 16 characters', file;
    END IF;
END
$$;

REVOKE ALL ON DATABASE postgres FROM PUBLIC;

\set password `cat /run/secrets/txn_log_db_password`
SELECT pg_temp.require_password(:'password', '/run/secrets/txn_log_db_password');
CREATE ROLE txn_log_owner LOGIN PASSWORD :'password';
CREATE DATABASE txn_log OWNER txn_log_owner;
REVOKE ALL ON DATABASE txn_log FROM PUBLIC;

\set password `cat /run/secrets/ledger1_db_password`
SELECT pg_temp.require_password(:'password', '/run/secrets/ledger1_db_password');
CREATE ROLE ledger1_owner LOGIN PASSWORD :'password';
CREATE DATABASE ledger1 OWNER ledger1_owner;
REVOKE ALL ON DATABASE ledger1 FROM PUBLIC;

\set password `cat /run/secrets/ledger2_db_password`
SELECT pg_temp.require_password(:'password', '/run/secrets/ledger2_db_password');
CREATE ROLE ledger2_owner LOGIN PASSWORD :'password';
CREATE DATABASE ledger2 OWNER ledger2_owner;
REVOKE ALL ON DATABASE ledger2 FROM PUBLIC;

\set password `cat /run/secrets/ledger3_db_password`
SELECT pg_temp.require_password(:'password', '/run/secrets/ledger3_db_password');
CREATE ROLE ledger3_owner LOGIN PASSWORD :'password';
CREATE DATABASE ledger3 OWNER ledger3_owner;
REVOKE ALL ON DATABASE ledger3 FROM PUBLIC;

\set password `cat /run/secrets/orders_db_password`
SELECT pg_temp.require_password(:'password', '/run/secrets/orders_db_password');
CREATE ROLE orders_owner LOGIN PASSWORD :'password';
CREATE DATABASE orders OWNER orders_owner;
REVOKE ALL ON DATABASE orders FROM PUBLIC;

\set password `cat /run/secrets/inventory_db_password`
SELECT pg_temp.require_password(:'password', '/run/secrets/inventory_db_password');
CREATE ROLE inventory_owner LOGIN PASSWORD :'password';
CREATE DATABASE inventory OWNER inventory_owner;
REVOKE ALL ON DATABASE inventory FROM PUBLIC;

\set password `cat /run/secrets/payments_db_password`
SELECT pg_temp.require_password(:'password', '/run/secrets/payments_db_password');
CREATE ROLE payments_owner LOGIN PASSWORD :'password';
CREATE DATABASE payments OWNER payments_owner;
REVOKE ALL ON DATABASE payments FROM PUBLIC;

\set password `cat /run/secrets/shipping_db_password`
SELECT pg_temp.require_password(:'password', '/run/secrets/shipping_db_password');
CREATE ROLE shipping_owner LOGIN PASSWORD :'password';
CREATE DATABASE shipping OWNER shipping_owner;
REVOKE ALL ON DATABASE shipping FROM PUBLIC;

\unset password
