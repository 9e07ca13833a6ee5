#!/usr/bin/env node
/**
 * Deprecated path, kept so that it keeps working: `node dist/scripts/serve.js <env> [app]` (in
 * container images, systemd units and scripts written before the server's entry point moved to
 * the API). The server is api/serve.ts (`node dist/api/serve.js`, the `pgvault-serve` bin).
 */
import '../api/serve';
