import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Options, ValidateFunction } from 'ajv';

/**
 * Ajv's validator for a JSON schema, compiled once and kept as standalone code beside this file,
 * under a name made from the schema, the options and Ajv's version. Compiling takes a few hundred
 * milliseconds and loading the kept code a few; every command that reads an environment (each
 * deploy, each hook) would pay the compile otherwise. Where the directory is read-only, it
 * compiles every time.
 */
export function schemaValidator(schema: object, options: Options): ValidateFunction {
  const ajvVersion: string = require('ajv/package.json').version;
  const key = crypto.createHash('sha256').update(JSON.stringify([schema, options, ajvVersion])).digest('hex').slice(0, 16);
  const file = path.join(__dirname, `.schema-validator-${key}.js`);
  if (fs.existsSync(file)) {
    try {
      return require(file);
    } catch {
      // unreadable: compile again below
    }
  }
  const Ajv = require('ajv').default;
  const standaloneCode = require('ajv/dist/standalone').default;
  const ajv = new Ajv({ ...options, code: { ...options.code, source: true } });
  const validate: ValidateFunction = ajv.compile(schema);
  try {
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, standaloneCode(ajv, validate));
    fs.renameSync(tmp, file);
  } catch {
    // not kept: the next command compiles again
  }
  return validate;
}
