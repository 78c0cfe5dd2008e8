// The Entra app registration the sign-in proxy (oauth2-proxy, provider
// entra-id) signs users in with, its service principal, and the federated
// credential that lets the proxy's Kubernetes ServiceAccount redeem codes
// without a client secret (workload identity). Deployed through the
// Microsoft Graph Bicep extension, as the deploying user: main.bicep calls
// this module only when [access] host is set and no client_id is given.
//
// identifierUris must be api://<appId>, and the appId exists only once the
// app does; signin-api.bicep declares the same app (same uniqueName) a second
// time, in its own deployment, adding the App ID URI and the exposed API.
// Graph Bicep upserts by uniqueName and only writes the properties a
// declaration names, so neither declaration undoes the other on a re-deploy.
extension microsoftGraphV1

@description('Unique name of the app registration in the tenant (an alternate key; immutable once created).')
param uniqueName string

@description('Display name of the app registration.')
param displayName string

@description('Host name of the HTTPS entry point; the redirect URI is https://<host>/oauth2/callback.')
param host string

@description('OIDC issuer URL of the AKS cluster, the issuer of the proxy\'s ServiceAccount tokens.')
param oidcIssuerUrl string

@description('Subject of the proxy\'s ServiceAccount tokens: system:serviceaccount:<namespace>:<release>-signin.')
param serviceAccountSubject string

@description('Object ID of the deploying user or service principal, made an owner of the app so it can update it on the next deploy.')
param ownerPrincipalId string

// Delegated permissions the proxy asks for at sign-in: on Microsoft Graph
// (00000003-...) OpenID Connect's openid, profile, email and offline_access;
// on AKS's server app "Azure Kubernetes Service AAD Server" (6dae42f8-...)
// user.read, whose access token the proxy hands the Argo server so each UI
// call runs with the user's own Kubernetes rights. Declared so that an admin
// can grant them once for the tenant; otherwise each user consents at first
// sign-in.
var signinPermissions = [
  {
    resourceAppId: '00000003-0000-0000-c000-000000000000'
    resourceAccess: [
      {
        id: '37f7f235-527c-4136-accd-4a02d197296e'
        type: 'Scope'
      }
      {
        id: '14dad69e-099b-42c9-810b-d002981feec1'
        type: 'Scope'
      }
      {
        id: '64a6cdd6-aab1-4aaf-94b8-3cc8405e90d0'
        type: 'Scope'
      }
      {
        id: '7427e0e9-2fba-42fe-b0c0-848c9e6a8182'
        type: 'Scope'
      }
    ]
  }
  {
    resourceAppId: '6dae42f8-4368-4678-94ff-3960e28e3630'
    resourceAccess: [
      {
        id: '34a47c2f-cd0d-47b4-a93c-2c41130c671c'
        type: 'Scope'
      }
    ]
  }
]

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  groupMembershipClaims: 'SecurityGroup'
  web: {
    redirectUris: [
      'https://${host}/oauth2/callback'
    ]
    implicitGrantSettings: {
      enableIdTokenIssuance: false
      enableAccessTokenIssuance: false
    }
  }
  optionalClaims: {
    idToken: [
      {
        name: 'email'
        essential: false
      }
    ]
    accessToken: [
      {
        name: 'email'
        essential: false
      }
    ]
  }
  requiredResourceAccess: signinPermissions
  owners: {
    relationships: [
      ownerPrincipalId
    ]
  }

  resource proxyCredential 'federatedIdentityCredentials@v1.0' = {
    name: '${app.uniqueName}/metaflow-signin'
    description: 'The Metaflow sign-in proxy\'s Kubernetes ServiceAccount (AKS workload identity)'
    issuer: oidcIssuerUrl
    subject: serviceAccountSubject
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

resource servicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: app.appId
}

module api 'signin-api.bicep' = {
  name: 'mfhelm-signin-api'
  params: {
    uniqueName: uniqueName
    displayName: displayName
    appId: app.appId
  }
}

@description('Application (client) ID of the app registration.')
output clientId string = app.appId

@description('Object ID of the app\'s service principal in the tenant.')
output servicePrincipalId string = servicePrincipal.id

@description('The App ID URI laptops ask tokens for (scope <uri>/.default).')
output identifierUri string = api.outputs.identifierUri
