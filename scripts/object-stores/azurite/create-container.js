// Creates a blob container on Azurite, signed with the account's key
// (Shared Key auth; Azurite accepts nothing less). No dependencies beyond
// Node itself. Exits 0 when the container exists.
//   node create-container.js http://127.0.0.1:PORT CONTAINER ACCOUNT KEY
"use strict";
const crypto = require("crypto");
const http = require("http");

const [base, container, ACCOUNT, KEY] = process.argv.slice(2);
if (!base || !container || !ACCOUNT || !KEY) {
  console.error("usage: node create-container.js http://127.0.0.1:PORT CONTAINER ACCOUNT KEY");
  process.exit(2);
}
const url = new URL(`${base}/${ACCOUNT}/${container}?restype=container`);
const date = new Date().toUTCString();
const version = "2021-10-04";
const headers = { "x-ms-date": date, "x-ms-version": version };
const canonicalHeaders = Object.keys(headers)
  .sort()
  .map((h) => `${h}:${headers[h]}\n`)
  .join("");
// Path-style emulator URLs carry the account in the path too.
const canonicalResource = `/${ACCOUNT}${url.pathname}\nrestype:container`;
const stringToSign =
  ["PUT", "", "", "", "", "", "", "", "", "", "", ""].join("\n") + "\n" + canonicalHeaders + canonicalResource;
const signature = crypto
  .createHmac("sha256", Buffer.from(KEY, "base64"))
  .update(stringToSign, "utf8")
  .digest("base64");
const req = http.request(
  url,
  {
    method: "PUT",
    headers: { ...headers, "Content-Length": 0, Authorization: `SharedKey ${ACCOUNT}:${signature}` },
  },
  (res) => {
    let body = "";
    res.on("data", (c) => (body += c));
    res.on("end", () => {
      // 201 created, 409 already there: both leave the container in place.
      if (res.statusCode === 201 || res.statusCode === 409) process.exit(0);
      console.error(`creating container ${container}: HTTP ${res.statusCode} ${body}`);
      process.exit(1);
    });
  },
);
req.on("error", (e) => {
  console.error(`creating container ${container}: ${e.message}`);
  process.exit(1);
});
req.end();
