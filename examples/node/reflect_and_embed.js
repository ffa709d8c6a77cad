// A Node client (@grpc/grpc-js) that knows no protssl .proto: it asks the server's reflection
// service (grpc.reflection.v1) for the API, then calls Embed, over TLS with an API token.
//
//   PROTSSL_TOKEN=protssl_... node reflect_and_embed.js 127.0.0.1:50051 ca.pem
'use strict';
const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [target, caPath] = process.argv.slice(2);
const token = process.env.PROTSSL_TOKEN;
if (!target || !caPath || !token) {
  console.error('usage: PROTSSL_TOKEN=... node reflect_and_embed.js HOST:PORT CA.pem');
  process.exit(2);
}
const tls = grpc.credentials.createSsl(fs.readFileSync(caPath));
const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  callback(null, metadata);
});
const credentials = grpc.credentials.combineChannelCredentials(tls, bearer);

const options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const reflection = grpc.loadPackageDefinition(
  protoLoader.loadSync(path.join(__dirname, 'reflection_v1.proto'), options),
).grpc.reflection.v1;

// One reflection stream: ask each question in turn, collect the answers.
function ask(requests) {
  return new Promise((resolve, reject) => {
    const client = new reflection.ServerReflection(target, credentials);
    const call = client.ServerReflectionInfo();
    const answers = [];
    call.on('data', (response) => {
      if (response.error_response) {
        reject(new Error(response.error_response.error_message));
      }
      answers.push(response);
      if (answers.length === requests.length) call.end();
    });
    call.on('error', reject);
    call.on('end', () => { client.close(); resolve(answers); });
    for (const request of requests) call.write(request);
  });
}

// A FileDescriptorSet (field 1: repeated FileDescriptorProto) from the serialized files.
function descriptorSet(files) {
  const parts = [];
  for (const file of files) {
    let n = file.length;
    const varint = [];
    do { let b = n & 0x7f; n >>>= 7; if (n) b |= 0x80; varint.push(b); } while (n);
    parts.push(Buffer.from([0x0a, ...varint]), file);
  }
  return Buffer.concat(parts);
}

async function main() {
  const [listed] = await ask([{ list_services: '' }]);
  const services = listed.list_services_response.service.map((s) => s.name);
  console.log('reflection v1 services:', services.join(', '));
  const [found] = await ask([{ file_containing_symbol: 'protssl.v1.EmbeddingService' }]);
  const files = found.file_descriptor_response.file_descriptor_proto;
  console.log(`reflection v1 gave ${files.length} file descriptor(s) for protssl.v1.EmbeddingService`);

  const api = grpc.loadPackageDefinition(
    protoLoader.loadFileDescriptorSetFromBuffer(descriptorSet(files), options),
  ).protssl.v1;
  const embeddings = new api.EmbeddingService(target, credentials);
  const request = { sequences: [{ id: 'p1', sequence: 'MKTAYIAKQRQISFVKSHFSRQ' }] };
  embeddings.Embed(request, { deadline: Date.now() + 60000 }, (error, response) => {
    embeddings.close();
    if (error) {
      console.error(`Embed failed: ${grpc.status[error.code]} ${error.details}`);
      process.exit(1);
    }
    const e = response.embeddings[0];
    const vector = new Float32Array(Uint8Array.from(e.vector).buffer);  // little-endian float32
    console.log(
      `Embed over TLS with a token: ${e.id} dim ${e.dim} pooling ${e.provenance.pooling}, ` +
      `first values ${Array.from(vector.slice(0, 3)).map((v) => v.toFixed(4)).join(' ')}`,
    );
  });
}

main().catch((error) => { console.error(error.message || error); process.exit(1); });
