# Sourced by the DNS Push bench scripts: makes a throwaway certificate chain
# in $out (ECDSA P-256, as Let's Encrypt issues by default): ca.pem, and
# cert.pem (the leaf for 127.0.0.1 and push.example.org, then the CA) with
# key.pem.
openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key" 2>/dev/null
openssl req -x509 -new -key "$out/ca.key" -subj "/CN=llq bench CA" -days 2 -out "$out/ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$out/key.pem" 2>/dev/null
openssl req -new -key "$out/key.pem" -subj "/CN=push.example.org" -out "$out/leaf.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:push.example.org\nextendedKeyUsage=serverAuth\n' >"$out/leaf.ext"
openssl x509 -req -in "$out/leaf.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial -days 2 \
	-extfile "$out/leaf.ext" -out "$out/leaf.pem" 2>/dev/null
cat "$out/leaf.pem" "$out/ca.pem" >"$out/cert.pem"
