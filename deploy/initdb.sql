-- Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d).
-- One server, one database per role: the coordinators' shared log and each participant service's
-- own (the ledgers and the demo shop's orders, inventory, payments and shipping).
-- The schemas are created afterwards by the compose service `migrate` (txn migrate).
CREATE DATABASE txn_log;
CREATE DATABASE ledger1;
CREATE DATABASE ledger2;
CREATE DATABASE ledger3;
CREATE DATABASE orders;
CREATE DATABASE inventory;
CREATE DATABASE payments;
CREATE DATABASE shipping;
