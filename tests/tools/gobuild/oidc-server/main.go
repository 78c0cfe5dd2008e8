// oidc-server: the OpenID provider mfhelm's access tests sign in against.
//
// zitadel's example provider (its in-memory storage and username/password
// login page) with what the tests need on top:
//
//   - it listens on 127.0.0.1 only, on -port (0: a free port), and prints
//     its issuer URL as the first line of stdout once it accepts requests;
//   - one web client (-client-id, -client-secret) whose redirect URIs are
//     globs (-redirect-uri, repeatable), so a proxy started later on any
//     port can use it;
//   - users and groups from a JSON file (-users);
//   - tokens shaped like Entra ID's: ID tokens and JWT access tokens carry
//     `tid`, `oid`, `groups` (group object ids), `preferred_username` and
//     `name`; access tokens have aud = the client id (as Entra's v2 tokens
//     for an app that exposes an API) and `scp`; the code flow with
//     `offline_access` returns a refresh token, rotated on each refresh;
//   - the access token lifetime is -access-token-ttl (refresh tests);
//   - like an Entra app's federated identity credential (-federated-*), the
//     token endpoint accepts, instead of the client secret, a client
//     assertion (urn:ietf:params:oauth:client-assertion-type:jwt-bearer)
//     that is a JWT from the named issuer, subject and audience, signed by a
//     key of the given JWKS: what oauth2-proxy's entra-id provider sends with
//     its workload-identity token.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

// userFile is the -users file: {"tenant": "<tid>", "users": [...]}.
type userFile struct {
	Tenant string     `json:"tenant"`
	Users  []userInfo `json:"users"`
}

type userInfo struct {
	Username string   `json:"username"` // also the email and preferred_username
	Password string   `json:"password"`
	Name     string   `json:"name"`
	OID      string   `json:"oid"`    // Entra object id
	Sub      string   `json:"sub"`    // default "sub-" + oid (Entra's sub is not the oid)
	Groups   []string `json:"groups"` // group object ids
}

type users struct {
	tenant     string
	byID       map[string]*storage.User
	byUsername map[string]*storage.User
	extra      map[string]userInfo // by subject
}

func loadUsers(path string) (*users, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var file userFile
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if file.Tenant == "" {
		return nil, fmt.Errorf("%s: no tenant", path)
	}
	u := &users{
		tenant:     file.Tenant,
		byID:       map[string]*storage.User{},
		byUsername: map[string]*storage.User{},
		extra:      map[string]userInfo{},
	}
	for _, info := range file.Users {
		if info.Username == "" || info.Password == "" || info.OID == "" {
			return nil, fmt.Errorf("%s: each user needs username, password and oid", path)
		}
		if info.Sub == "" {
			info.Sub = "sub-" + info.OID
		}
		if info.Groups == nil {
			info.Groups = []string{}
		}
		first, last, _ := strings.Cut(info.Name, " ")
		user := &storage.User{
			ID:        info.Sub,
			Username:  info.Username,
			Password:  info.Password,
			FirstName: first,
			LastName:  last,
			Email:     info.Username,
			// Otherwise the ID token says "locale": null.
			PreferredLanguage: language.English,
		}
		u.byID[user.ID] = user
		u.byUsername[user.Username] = user
		u.extra[user.ID] = info
	}
	return u, nil
}

// storage.UserStore
func (u *users) GetUserByID(id string) *storage.User         { return u.byID[id] }
func (u *users) GetUserByUsername(name string) *storage.User { return u.byUsername[name] }
func (u *users) ExampleClientID() string                     { return storage.ServiceUserID }
func (u *users) claims(subject string) (map[string]any, bool) {
	info, ok := u.extra[subject]
	if !ok {
		return nil, false
	}
	return map[string]any{
		"tid":                u.tenant,
		"oid":                info.OID,
		"groups":             info.Groups,
		"preferred_username": info.Username,
		"name":               info.Name,
	}, true
}

// entraStorage is the example storage with Entra-shaped claims added and
// the client handed out as a JWT-access-token client with redirect globs.
type entraStorage struct {
	*storage.Storage
	users     *users
	clientID  string
	redirects []string
	tokenTTL  time.Duration
}

type entraClient struct {
	op.Client
	redirects []string
	clientID  string
}

func (c entraClient) AccessTokenType() op.AccessTokenType  { return op.AccessTokenTypeJWT }
func (c entraClient) RedirectURIGlobs() []string           { return c.redirects }
func (c entraClient) PostLogoutRedirectURIGlobs() []string { return c.redirects }
func (c entraClient) IDTokenUserinfoClaimsAssertion() bool { return true }
func (c entraClient) IsScopeAllowed(scope string) bool {
	// Entra's resource scopes: api://<app id>/.default, api://<app id>/<scope>.
	return strings.HasPrefix(scope, "api://"+c.clientID+"/") || c.Client.IsScopeAllowed(scope)
}

func (s *entraStorage) GetClientByClientID(ctx context.Context, id string) (op.Client, error) {
	client, err := s.Storage.GetClientByClientID(ctx, id)
	if err != nil {
		return nil, err
	}
	return entraClient{Client: client, redirects: s.redirects, clientID: s.clientID}, nil
}

// ID tokens and userinfo.
func (s *entraStorage) SetUserinfoFromRequest(ctx context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, info, req, scopes); err != nil {
		return err
	}
	return s.appendClaims(info, req.GetSubject())
}

func (s *entraStorage) SetUserinfoFromToken(ctx context.Context, info *oidc.UserInfo, tokenID, subject, origin string) error {
	if err := s.Storage.SetUserinfoFromToken(ctx, info, tokenID, subject, origin); err != nil {
		return err
	}
	return s.appendClaims(info, subject)
}

func (s *entraStorage) appendClaims(info *oidc.UserInfo, subject string) error {
	claims, ok := s.users.claims(subject)
	if !ok {
		return errors.New("user not found")
	}
	for k, v := range claims {
		info.AppendClaims(k, v)
	}
	return nil
}

// JWT access tokens.
func (s *entraStorage) GetPrivateClaimsFromScopes(ctx context.Context, userID, clientID string, scopes []string) (map[string]any, error) {
	claims, ok := s.users.claims(userID)
	if !ok {
		return nil, errors.New("user not found")
	}
	claims["ver"] = "2.0"
	claims["azp"] = clientID
	var scp []string
	for _, scope := range scopes {
		if rest, ok := strings.CutPrefix(scope, "api://"+s.clientID+"/"); ok {
			if rest == ".default" {
				rest = "user_impersonation"
			}
			scp = append(scp, rest)
		}
	}
	if len(scp) > 0 {
		claims["scp"] = strings.Join(scp, " ")
	}
	return claims, nil
}

// The example storage gives every access token five minutes; the tests of a
// client's refresh want shorter ones. The JWT's exp is the time returned here.
func (s *entraStorage) CreateAccessToken(ctx context.Context, req op.TokenRequest) (string, time.Time, error) {
	id, _, err := s.Storage.CreateAccessToken(ctx, req)
	return id, time.Now().Add(s.tokenTTL), err
}

func (s *entraStorage) CreateAccessAndRefreshTokens(ctx context.Context, req op.TokenRequest, current string) (string, string, time.Time, error) {
	id, refresh, _, err := s.Storage.CreateAccessAndRefreshTokens(ctx, req, current)
	return id, refresh, time.Now().Add(s.tokenTTL), err
}

// federated is the app's federated identity credential.
type federated struct {
	issuer, subject, audience string
	keys                      jose.JSONWebKeySet
	clientID, clientSecret    string
}

const jwtBearerAssertion = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// verify checks a client assertion as Entra checks one against a federated
// credential: signature (a key of the issuer's set), iss, sub, aud, expiry.
func (f *federated) verify(assertion string) error {
	tok, err := jwt.ParseSigned(assertion, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
	if err != nil {
		return err
	}
	if len(tok.Headers) != 1 {
		return errors.New("one signature expected")
	}
	keys := f.keys.Key(tok.Headers[0].KeyID)
	if len(keys) == 0 {
		return fmt.Errorf("no key %q in the issuer's key set", tok.Headers[0].KeyID)
	}
	var claims jwt.Claims
	if err := tok.Claims(keys[0].Public(), &claims); err != nil {
		return err
	}
	return claims.ValidateWithLeeway(jwt.Expected{
		Issuer: f.issuer, Subject: f.subject, AnyAudience: jwt.Audience{f.audience},
		Time: time.Now(),
	}, 30*time.Second)
}

// middleware turns a token request authenticated by a valid federated
// assertion into one authenticated by the client's secret, which the
// example storage knows; an invalid assertion is refused here.
func (f *federated) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/oauth/token" {
			next.ServeHTTP(w, r)
			return
		}
		if err := r.ParseForm(); err != nil || r.PostForm.Get("client_assertion_type") != jwtBearerAssertion {
			next.ServeHTTP(w, r)
			return
		}
		form := url.Values{}
		for k, v := range r.PostForm {
			form[k] = v
		}
		err := f.verify(form.Get("client_assertion"))
		if err == nil && form.Get("client_id") != f.clientID {
			err = fmt.Errorf("client_id %q has no federated credential", form.Get("client_id"))
		}
		if err != nil {
			slog.Warn("federated client assertion refused", "error", err)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(map[string]string{
				"error":             "invalid_client",
				"error_description": "no matching federated identity record for the assertion: " + err.Error(),
			})
			return
		}
		form.Del("client_assertion")
		form.Del("client_assertion_type")
		form.Del("client_id")
		body := form.Encode()
		r.Body = io.NopCloser(strings.NewReader(body))
		r.ContentLength = int64(len(body))
		r.PostForm, r.Form = nil, nil
		r.Header.Set("Content-Length", fmt.Sprint(len(body)))
		r.SetBasicAuth(url.QueryEscape(f.clientID), url.QueryEscape(f.clientSecret))
		next.ServeHTTP(w, r)
	})
}

type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	port := flag.Int("port", 0, "port on 127.0.0.1 (0: any free port)")
	usersPath := flag.String("users", "", "users file (JSON: tenant, users[username, password, name, oid, groups])")
	clientID := flag.String("client-id", "", "the web client's id (the audience of its access tokens)")
	clientSecret := flag.String("client-secret", "", "the web client's secret")
	ttl := flag.Duration("access-token-ttl", 5*time.Minute, "access token lifetime")
	var redirects repeated
	flag.Var(&redirects, "redirect-uri", "allowed redirect URI glob (repeatable), e.g. http://127.0.0.1:*/oauth2/callback")
	fedIssuer := flag.String("federated-issuer", "", "federated credential: the assertion's issuer (e.g. the AKS OIDC issuer)")
	fedSubject := flag.String("federated-subject", "", "federated credential: the assertion's subject (system:serviceaccount:<ns>:<name>)")
	fedAudience := flag.String("federated-audience", "api://AzureADTokenExchange", "federated credential: the assertion's audience")
	fedKeys := flag.String("federated-jwks", "", "federated credential: the issuer's key set (JWKS file)")
	flag.Parse()
	if *usersPath == "" || *clientID == "" || *clientSecret == "" || len(redirects) == 0 {
		fmt.Fprintln(os.Stderr, "oidc-server: -users, -client-id, -client-secret and -redirect-uri are required")
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	userStore, err := loadUsers(*usersPath)
	if err != nil {
		logger.Error("cannot read users", "error", err)
		os.Exit(2)
	}
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		logger.Error("cannot listen", "error", err)
		os.Exit(1)
	}
	issuer := "http://" + listener.Addr().String()

	storage.RegisterClients(storage.WebClient(*clientID, *clientSecret))
	store := &entraStorage{
		Storage:   storage.NewStorage(userStore),
		users:     userStore,
		clientID:  *clientID,
		redirects: redirects,
		tokenTTL:  *ttl,
	}
	var handler http.Handler = exampleop.SetupServer(issuer, store, logger, false)
	if *fedIssuer != "" {
		fed := &federated{issuer: *fedIssuer, subject: *fedSubject, audience: *fedAudience,
			clientID: *clientID, clientSecret: *clientSecret}
		data, err := os.ReadFile(*fedKeys)
		if err == nil {
			err = json.Unmarshal(data, &fed.keys)
		}
		if err != nil || *fedSubject == "" || len(fed.keys.Keys) == 0 {
			logger.Error("a federated credential needs -federated-subject and a -federated-jwks key set", "error", err)
			os.Exit(2)
		}
		handler = fed.middleware(handler)
	}
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(ctx)
	}()
	fmt.Println(issuer)
	if err := server.Serve(listener); !errors.Is(err, http.ErrServerClosed) {
		logger.Error("server stopped", "error", err)
		os.Exit(1)
	}
}
