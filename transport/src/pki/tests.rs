#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Asserts that `cert_der` was signed by `ca`'s key.
#[track_caller]
fn assert_signed_by(cert_der: &[u8], ca: &ClusterCa) {
    let (_, cert) = X509Certificate::from_der(cert_der).unwrap();
    let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert_eq!(cert.issuer(), ca_cert.subject());
}

/// A CSR that asks for everything an attacker would want: CA:TRUE, certSign, a subject,
/// extra DNS/URI/IP SANs (including an admin identity), serverAuth and anyEKU, and a
/// century of validity (PKCS#10 has no validity field, so rcgen drops that one; the
/// test still checks that the certificate's validity comes only from the caller).
fn greedy_csr() -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "root");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::Any,
    ];
    params.subject_alt_names = vec![
        SanType::DnsName("evil.example".try_into().unwrap()),
        SanType::URI("spiffe://prod/admin/root".try_into().unwrap()),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let csr = params.serialize_request(&key).unwrap();
    let der = csr.der().to_vec();

    // The premise: the request really carries all of it, so signing its own
    // parameters (`csr.signed_by`) would hand them out.
    let asked = rcgen::CertificateSigningRequestParams::from_der(&der.as_slice().into()).unwrap();
    assert!(matches!(asked.params.is_ca, IsCa::Ca(_)));
    assert_eq!(asked.params.subject_alt_names.len(), 3);
    assert!(asked
        .params
        .extended_key_usages
        .contains(&ExtendedKeyUsagePurpose::ServerAuth));
    (key, der)
}

#[test]
fn greedy_csr_gets_only_the_agent_identity() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (key, csr) = greedy_csr();
    let agent = uuid::Uuid::new_v4();
    let validity = 30 * DAY;
    let before = OffsetDateTime::now_utc();
    let pem = ca.sign_agent_csr(&csr, "prod", agent, validity).unwrap();
    let after = OffsetDateTime::now_utc();

    let der = der_of(&pem);
    assert_signed_by(&der, &ca);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();

    // Not a CA, and says so explicitly.
    assert!(!cert.is_ca());
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(!bc.value.ca);
    assert!(bc.value.path_len_constraint.is_none());
    // No certSign.
    let ku = cert.key_usage().unwrap().expect("keyUsage present").value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign());
    assert!(!ku.crl_sign());

    // Exactly one SAN, the agent's SPIFFE id.
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    let expected = format!("spiffe://prod/agent/{agent}");
    assert_eq!(sans, &vec![GeneralName::URI(&expected)]);
    assert_eq!(cert_uri_sans(&der).unwrap(), vec![expected.clone()]);
    assert_eq!(agent_spiffe_id("prod", agent).unwrap(), expected);
    assert_eq!(
        helix_protocol::Identity::from_uri_sans(std::slice::from_ref(&expected), "prod").unwrap(),
        helix_protocol::Identity::Agent {
            cluster: "prod".into(),
            id: helix_protocol::AgentId(agent)
        }
    );

    // Empty subject: nothing from the CSR's subject.
    assert_eq!(cert.subject().iter().count(), 0);

    // clientAuth only.
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth);
    assert!(!eku.server_auth && !eku.any && !eku.code_signing && !eku.ocsp_signing);
    assert!(eku.other.is_empty());

    // Validity: from about now - 5 min to now + 30 days, never the CSR's century.
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    let span = time::Duration::try_from(validity).unwrap();
    assert!(not_before <= before - time::Duration::minutes(5) + time::Duration::seconds(1));
    assert!(not_before >= before - time::Duration::minutes(6));
    assert!(
        not_after <= after + span,
        "{not_after} is beyond the given validity"
    );
    assert!(not_after >= before + span - time::Duration::seconds(2));
    assert_eq!(cert_not_after(&pem).unwrap(), not_after);

    // The certificate carries the CSR's key.
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn serials_are_random() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (_, csr) = greedy_csr();
    let agent = uuid::Uuid::new_v4();
    let a = der_of(&ca.sign_agent_csr(&csr, "prod", agent, DAY).unwrap());
    let b = der_of(&ca.sign_agent_csr(&csr, "prod", agent, DAY).unwrap());
    let serial = |der: &[u8]| {
        X509Certificate::from_der(der)
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    };
    assert_ne!(serial(&a), serial(&b));
    assert_eq!(serial(&a).len(), 16);
}

#[test]
fn tampered_csr_is_refused() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (_, csr) = greedy_csr();

    // Change a requested SAN after signing: the signature no longer covers the content.
    let mut altered = csr.clone();
    let at = altered
        .windows(b"evil.example".len())
        .position(|w| w == b"evil.example")
        .unwrap();
    altered[at] = b'E';
    let err = ca
        .sign_agent_csr(&altered, "prod", uuid::Uuid::new_v4(), DAY)
        .unwrap_err();
    assert!(matches!(err, PkiError::CsrSignature), "{err}");

    // Swap in another key: the signature was made by the first one.
    let (_, other_csr) = generate_key_and_csr().unwrap();
    let (_, parsed) = X509CertificationRequest::from_der(&csr).unwrap();
    let (_, other) = X509CertificationRequest::from_der(&other_csr).unwrap();
    let mine = parsed.certification_request_info.subject_pki.raw;
    let theirs = other.certification_request_info.subject_pki.raw;
    assert_eq!(mine.len(), theirs.len());
    let at = csr.windows(mine.len()).position(|w| w == mine).unwrap();
    let mut swapped = csr.clone();
    swapped[at..at + mine.len()].copy_from_slice(theirs);
    let err = ca
        .sign_agent_csr(&swapped, "prod", uuid::Uuid::new_v4(), DAY)
        .unwrap_err();
    assert!(matches!(err, PkiError::CsrSignature), "{err}");

    // Garbage and trailing bytes.
    let err = ca
        .sign_agent_csr(b"not a csr", "prod", uuid::Uuid::new_v4(), DAY)
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");
    let mut trailing = csr.clone();
    trailing.push(0);
    let err = ca
        .sign_agent_csr(&trailing, "prod", uuid::Uuid::new_v4(), DAY)
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");
}

#[test]
fn agent_key_and_csr_round_trip() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (key_pem, csr) = generate_key_and_csr().unwrap();
    let key = KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let pem = ca
        .sign_agent_csr(&csr, "prod", uuid::Uuid::new_v4(), DAY)
        .unwrap();
    let der = der_of(&pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn validity_is_checked_and_capped_at_the_ca() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (_, csr) = generate_key_and_csr().unwrap();
    let id = uuid::Uuid::new_v4();
    let err = ca
        .sign_agent_csr(&csr, "prod", id, Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidValidity(..)), "{err}");
    let err = ca
        .sign_agent_csr(&csr, "prod", id, Duration::MAX)
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidValidity(..)), "{err}");
    let pem = ca
        .sign_agent_csr(&csr, "prod", id, 100 * 365 * DAY)
        .unwrap();
    let ca_not_after = cert_not_after(ca.cert_pem()).unwrap();
    assert_eq!(cert_not_after(&pem).unwrap(), ca_not_after);
}

#[test]
fn names_are_validated() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (_, csr) = generate_key_and_csr().unwrap();
    for cluster in ["", "Prod", "a/b", "x y", "évian"] {
        let err = ca
            .sign_agent_csr(&csr, cluster, uuid::Uuid::new_v4(), DAY)
            .unwrap_err();
        assert!(
            matches!(err, PkiError::InvalidName { .. }),
            "{cluster:?}: {err}"
        );
        assert!(ClusterCa::generate(cluster).is_err(), "{cluster:?}");
    }
    for name in ["", ".", "..", "a/b", "root?x=1", "a b"] {
        let err = ca.issue_admin_cert("prod", name, DAY).unwrap_err();
        assert!(
            matches!(err, PkiError::InvalidName { .. }),
            "{name:?}: {err}"
        );
    }
    for san in ["", "bad name", "http://x", "a..b"] {
        let err = ca.issue_server_cert(&[san.to_owned()], DAY).unwrap_err();
        assert!(
            matches!(err, PkiError::InvalidName { .. }),
            "{san:?}: {err}"
        );
    }
    assert!(ca.issue_server_cert(&[], DAY).is_err());
}

#[test]
fn server_cert_has_ip_and_dns_sans() {
    let ca = ClusterCa::generate("prod").unwrap();
    let sans = [
        "localhost",
        "127.0.0.1",
        "::1",
        "[::1]",
        "build.example.com",
    ]
    .map(String::from);
    let issued = ca.issue_server_cert(&sans, 90 * DAY).unwrap();
    let der = der_of(&issued.cert_pem);
    assert_signed_by(&der, &ca);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let names = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    let v4 = Ipv4Addr::LOCALHOST.octets();
    let v6 = Ipv6Addr::LOCALHOST.octets();
    assert_eq!(
        names,
        &vec![
            GeneralName::DNSName("localhost"),
            GeneralName::IPAddress(&v4),
            GeneralName::IPAddress(&v6),
            GeneralName::DNSName("build.example.com"),
        ]
    );
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth && !eku.any);
    // The key belongs to the certificate.
    let key = KeyPair::from_pem(&issued.key_pem).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
}

#[test]
fn admin_cert_has_only_its_spiffe_id() {
    let ca = ClusterCa::generate("prod").unwrap();
    let issued = ca.issue_admin_cert("prod", "alice", 365 * DAY).unwrap();
    let der = der_of(&issued.cert_pem);
    assert_signed_by(&der, &ca);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let names = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(names, &vec![GeneralName::URI("spiffe://prod/admin/alice")]);
    assert_eq!(
        helix_protocol::Identity::from_uri_sans(&cert_uri_sans(&der).unwrap(), "prod").unwrap(),
        helix_protocol::Identity::Admin {
            cluster: "prod".into(),
            name: "alice".into()
        }
    );
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any);
}

#[test]
fn ca_is_a_constrained_ca() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let cn = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "Helix cluster CA prod");
    let now = OffsetDateTime::now_utc();
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    assert!(not_before < now - time::Duration::minutes(59));
    assert!(not_after > now + time::Duration::days(3649));
    assert!(not_after < now + time::Duration::days(3651));
    assert_eq!(cert.raw_serial().len(), 16);
    assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
}

#[test]
fn ca_round_trips_through_pem() {
    let ca = ClusterCa::generate("prod").unwrap();
    let loaded = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    assert_eq!(loaded.fingerprint(), ca.fingerprint());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.key_pem(), ca.key_pem());
    assert_eq!(ca.fingerprint(), sha256_fingerprint(&der_of(ca.cert_pem())));
    assert_eq!(ca.fingerprint().len(), 64);

    // A certificate issued by the reloaded CA chains to the original certificate.
    let (_, csr) = generate_key_and_csr().unwrap();
    let pem = loaded
        .sign_agent_csr(&csr, "prod", uuid::Uuid::new_v4(), DAY)
        .unwrap();
    let der = der_of(&pem);
    assert_signed_by(&der, &ca);
    // Same authority key id as the original issuer would write.
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.clone()
            }
            _ => None,
        })
        .unwrap();
    let ski = ca_cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(aki.0, ski.0);
}

#[test]
fn from_pem_refuses_mismatched_or_non_ca_material() {
    let ca = ClusterCa::generate("prod").unwrap();
    let other = ClusterCa::generate("prod").unwrap();
    let err = ClusterCa::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch), "{err}");

    let leaf = ca.issue_admin_cert("prod", "alice", DAY).unwrap();
    let err = ClusterCa::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCaCert(_)), "{err}");

    let err = ClusterCa::from_pem("garbage", ca.key_pem()).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCaCert(_)), "{err}");
    let err = ClusterCa::from_pem(ca.cert_pem(), "garbage").unwrap_err();
    assert!(matches!(err, PkiError::InvalidKey(_)), "{err}");
}

#[test]
fn fingerprint_is_lower_hex_sha256() {
    assert_eq!(
        sha256_fingerprint(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn pem_encoding_matches_rcgen_and_round_trips() {
    let ca = ClusterCa::generate("prod").unwrap();
    assert_eq!(cert_pem_from_der(ca.cert_der()), ca.cert_pem());
    for len in 0..8 {
        let der: Vec<u8> = (0..len).map(|i| i as u8 * 37).collect();
        let pem = cert_pem_from_der(&der);
        if len > 0 {
            assert_eq!(der_of(&pem), der, "{pem}");
        }
    }
    assert_eq!(
        cert_pem_from_der(b"foob"),
        "-----BEGIN CERTIFICATE-----\nZm9vYg==\n-----END CERTIFICATE-----\n"
    );
}
