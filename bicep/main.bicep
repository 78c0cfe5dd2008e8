// mfhelm: the Azure side of a production Metaflow stack.
// Deployed at subscription scope by `make bicep-deploy`; its outputs are the
// only source mfhelm reads Azure names from. Every name is derived from
// orgPrefix and a deterministic uniqueString, so a re-deploy updates in place.
targetScope = 'subscription'

@description('Organisation prefix in every resource name: 2-8 characters, lowercase letters and digits, starting with a letter (the storage account name allows nothing else). The template checks the whole rule and fails before anything is created; mfhelm checks the same rule before deploying.')
@minLength(2)
@maxLength(8)
param orgPrefix string

@description('Azure region for every resource. Defaults to the location of the deployment itself.')
param location string = deployment().location

@description('Name of the resource group that holds the stack.')
@minLength(1)
@maxLength(90)
param resourceGroupName string = '${orgPrefix}-metaflow-rg'

@description('Whether the chart deploys Argo Workflows (passed through to the outputs for mfhelm).')
param deployArgo bool = true

@description('Whether the chart deploys Airflow; also creates the airflow-logs container.')
param deployAirflow bool = false

@description('Kubernetes version of the cluster as major.minor (e.g. 1.33), or empty for the AKS default. AKS runs the latest patch of that minor and the patch upgrade channel keeps it current; a patch version (1.33.2) is refused, since a re-deploy would ask AKS to go back to it.')
param kubernetesVersion string = ''

@description('AKS pricing tier: Standard carries the uptime SLA, Free does not.')
@allowed([
  'Free'
  'Standard'
])
param aksSkuTier string = 'Standard'

@description('VM size of the system node pool.')
param systemVmSize string = 'Standard_D2s_v5'

@description('Minimum node count of the system pool.')
@minValue(1)
@maxValue(1000)
param systemMinCount int = 1

@description('Maximum node count of the system pool.')
@minValue(1)
@maxValue(1000)
param systemMaxCount int = 3

@description('VM size of the services node pool.')
param servicesVmSize string = 'Standard_D2s_v5'

@description('Minimum node count of the services pool.')
@minValue(1)
@maxValue(1000)
param servicesMinCount int = 1

@description('Maximum node count of the services pool.')
@minValue(1)
@maxValue(1000)
param servicesMaxCount int = 3

@description('VM size of the taskworkers node pool, where flow pods run.')
param taskVmSize string = 'Standard_D4s_v5'

@description('Minimum node count of the taskworkers pool (0 lets it scale to zero).')
@minValue(0)
@maxValue(1000)
param taskMinCount int = 0

@description('Maximum node count of the taskworkers pool.')
@minValue(1)
@maxValue(1000)
param taskMaxCount int = 5

@description('Whether to create the GPU pool (off by default): NVIDIA task workers where only steps that request a GPU land.')
param gpuPoolEnabled bool = false

@description('VM size of the GPU pool, an NVIDIA size (the default has one T4).')
param gpuVmSize string = 'Standard_NC4as_T4_v3'

@description('Minimum node count of the GPU pool (0 lets it scale to zero).')
@minValue(0)
@maxValue(1000)
param gpuMinCount int = 0

@description('Maximum node count of the GPU pool.')
@minValue(1)
@maxValue(1000)
param gpuMaxCount int = 2

@description('Whether to create the Spot pool (off by default): Spot VMs for retryable steps that select mfhelm.io/pool=spot.')
param spotPoolEnabled bool = false

@description('VM size of the Spot pool.')
param spotVmSize string = 'Standard_D4s_v5'

@description('Minimum node count of the Spot pool (0 lets it scale to zero).')
@minValue(0)
@maxValue(1000)
param spotMinCount int = 0

@description('Maximum node count of the Spot pool.')
@minValue(1)
@maxValue(1000)
param spotMaxCount int = 5

@description('Whether to create the stack\'s container registry, where `mfhelm image build` builds the flow image and the nodes pull it from.')
param registryEnabled bool = true

@description('Current node count of each AKS pool that already exists, keyed by pool name. mfhelm reads it from the cluster before a re-deploy so the deploy keeps what the autoscaler chose; empty on the first deploy.')
param existingPoolCounts object = {}

@description('PostgreSQL major version.')
@allowed([
  '14'
  '15'
  '16'
  '17'
])
param postgresVersion string = '16'

@description('PostgreSQL compute tier.')
@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param postgresTier string = 'Burstable'

@description('PostgreSQL compute SKU, matching postgresTier.')
param postgresSku string = 'Standard_B1ms'

@description('PostgreSQL storage size in GiB.')
@minValue(32)
@maxValue(32768)
param postgresStorageGB int = 32

@description('PostgreSQL administrator login name.')
param postgresAdminLogin string = 'metaflowadmin'

@description('PostgreSQL administrator password. mfhelm generates it on the first deploy and reuses the Key Vault copy afterwards.')
@secure()
param postgresAdminPassword string

@description('Object ID of the principal running the deployment; it gets AKS RBAC Cluster Admin, read access to the password secret and Blob data access to the artifacts container.')
param deployerPrincipalId string

@description('Type of the deployer principal.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param deployerPrincipalType string = 'User'

@description('Kubernetes namespace of the Metaflow services.')
param serviceNamespace string = 'metaflow'

@description('Kubernetes namespace where flow pods run.')
param flowNamespace string = 'metaflow-flows'

@description('Host name of the HTTPS entry point (e.g. metaflow.example.com), or empty for none. A host turns on the application-routing add-on and, unless accessClientId is given, creates the Entra app registration the sign-in proxy uses.')
param accessHost string = ''

@description('Client ID of an existing Entra app registration for sign-in (for a deployer who may not create apps), or empty: the template creates one with the Microsoft Graph Bicep extension.')
param accessClientId string = ''

@description('Key Vault certificate ID the entry point serves (the certificates/<name> URL of the vault, optionally with a version), or empty when the chart is given a Kubernetes TLS Secret instead.')
param accessTlsCertificateId string = ''

@description('Resource ID of the Key Vault that holds accessTlsCertificateId (mfhelm looks it up), or empty.')
param accessTlsVaultId string = ''

@description('Helm release name: the sign-in proxy runs as ServiceAccount <release>-signin in serviceNamespace, the subject of the app\'s federated credential.')
param releaseName string = 'metaflow'

@description('Tags applied to every resource.')
param tags object = {}

// Rules Bicep has no decorator for (it has no pattern constraint), checked
// here so that a deployment started without mfhelm stops before anything is
// created, with a message naming the parameter, instead of failing at the
// storage account name or asking AKS to downgrade. mfhelm's settings apply the
// same rules (tests/bicep keeps the two in step). Every use of the parameters
// goes through checkedOrgPrefix and checkedKubernetesVersion. fail() sits in a
// string interpolation because checkov's Bicep parser has no fail() and would
// skip this whole file without a word.
var lowercaseLetters = 'abcdefghijklmnopqrstuvwxyz'
var decimalDigits = '0123456789'
var orgPrefixCharsOk = [for i in range(0, length(orgPrefix)): contains('${lowercaseLetters}${decimalDigits}', substring(orgPrefix, i, 1))]
var orgPrefixValid = contains(lowercaseLetters, first(orgPrefix)) && (!contains(orgPrefixCharsOk, false))
var checkedOrgPrefix = orgPrefixValid ? orgPrefix : '${fail('orgPrefix "${orgPrefix}": must be 2-8 characters, lowercase letters and digits, starting with a letter (it becomes part of the storage account name)')}'
var kubernetesVersionCharsOk = [for i in range(0, length(kubernetesVersion)): contains('${decimalDigits}.', substring(kubernetesVersion, i, 1))]
var kubernetesVersionValid = empty(kubernetesVersion) || ((length(split(kubernetesVersion, '.')) == 2) && (!startsWith(kubernetesVersion, '.')) && (!endsWith(kubernetesVersion, '.')) && (!contains(kubernetesVersionCharsOk, false)))
var checkedKubernetesVersion = kubernetesVersionValid ? kubernetesVersion : '${fail('kubernetesVersion "${kubernetesVersion}": must be major.minor such as 1.33, or empty for the AKS default (no patch version: AKS keeps the patch current, so a pinned patch would be a downgrade on the next deploy)')}'

// The access parameters: client id and certificate need a host, and the
// certificate's vault must be the vault accessTlsVaultId names (its last
// segment; vault names are case-insensitive). Every use goes through
// checkedAccessHost, the same way as above.
var accessHostGiven = !empty(accessHost)
var accessOptionsNeedNoHost = (empty(accessClientId)) && (empty(accessTlsCertificateId))
var tlsCertificateParts = split(accessTlsCertificateId, '/')
var tlsCertificateIdShaped = contains([
  5
  6
], length(tlsCertificateParts)) ? ((tlsCertificateParts[0] == 'https:') && ((empty(tlsCertificateParts[1])) && ((tlsCertificateParts[3] == 'certificates') && (!empty(tlsCertificateParts[4]))))) : false
var tlsCertificateName = tlsCertificateIdShaped ? tlsCertificateParts[4] : ''
var tlsCertificateVaultName = tlsCertificateIdShaped ? toLower(first(split(tlsCertificateParts[2], '.'))) : ''
var tlsVaultIdParts = split(accessTlsVaultId, '/')
var tlsVaultIdShaped = (length(tlsVaultIdParts) == 9) ? ((toLower(tlsVaultIdParts[6]) == 'microsoft.keyvault') && (toLower(tlsVaultIdParts[7]) == 'vaults')) : false
var tlsVaultMatches = tlsVaultIdShaped ? (toLower(last(tlsVaultIdParts)) == tlsCertificateVaultName) : false
var tlsVaultValid = (empty(accessTlsCertificateId)) || ((tlsCertificateIdShaped) && (tlsVaultMatches))
var checkedAccessHost = ((accessHostGiven) || (accessOptionsNeedNoHost)) ? (tlsVaultValid ? accessHost : '${fail('accessTlsCertificateId "${accessTlsCertificateId}": must be a Key Vault certificate id (https://<vault>.<vault DNS suffix>/certificates/<name>[/<version>]) of the vault whose resource id accessTlsVaultId "${accessTlsVaultId}" gives')}') : '${fail('accessClientId and accessTlsCertificateId need accessHost: the entry point they are for')}'
var accessEnabled = !empty(checkedAccessHost)
var createSigninApp = (accessEnabled) && (empty(accessClientId))
var tlsFromKeyVault = (accessEnabled) && (!empty(accessTlsCertificateId))
var signinServiceAccount = '${releaseName}-signin'

var nameSuffix = uniqueString(subscription().id, resourceGroupName, checkedOrgPrefix)
var metaflowContainerName = 'metaflow-storage'
var airflowLogsContainerName = 'airflow-logs'
var postgresDatabaseName = 'metaflow'
var postgresAdminSecretName = 'postgres-admin-password'
var serviceAccountService = 'metaflow-service'
var serviceAccountFlows = 'metaflow-flows'
var serviceAccountAirflow = 'metaflow-airflow'
var taskworkersLabelKey = 'mfhelm.io/pool'
var taskworkersLabelValue = 'taskworkers'

resource rg 'Microsoft.Resources/resourceGroups@2025-04-01' = {
  name: resourceGroupName
  location: location
  tags: tags
}

module network 'modules/network.bicep' = {
  name: 'mfhelm-network'
  scope: rg
  params: {
    location: location
    orgPrefix: checkedOrgPrefix
    tags: tags
  }
}

module aks 'modules/aks.bicep' = {
  name: 'mfhelm-aks'
  scope: rg
  params: {
    location: location
    orgPrefix: checkedOrgPrefix
    nameSuffix: take(nameSuffix, 6)
    kubernetesVersion: checkedKubernetesVersion
    skuTier: aksSkuTier
    vnetName: network.outputs.vnetName
    nodeSubnetName: network.outputs.aksSubnetName
    systemVmSize: systemVmSize
    systemMinCount: systemMinCount
    systemMaxCount: systemMaxCount
    servicesVmSize: servicesVmSize
    servicesMinCount: servicesMinCount
    servicesMaxCount: servicesMaxCount
    taskVmSize: taskVmSize
    taskMinCount: taskMinCount
    taskMaxCount: taskMaxCount
    gpuPoolEnabled: gpuPoolEnabled
    gpuVmSize: gpuVmSize
    gpuMinCount: gpuMinCount
    gpuMaxCount: gpuMaxCount
    spotPoolEnabled: spotPoolEnabled
    spotVmSize: spotVmSize
    spotMinCount: spotMinCount
    spotMaxCount: spotMaxCount
    existingPoolCounts: existingPoolCounts
    deployerPrincipalId: deployerPrincipalId
    deployerPrincipalType: deployerPrincipalType
    appRoutingEnabled: accessEnabled
    keyVaultSecretsProviderEnabled: tlsFromKeyVault
    tags: tags
  }
}

module identity 'modules/identity.bicep' = {
  name: 'mfhelm-identity'
  scope: rg
  params: {
    location: location
    orgPrefix: checkedOrgPrefix
    oidcIssuerUrl: aks.outputs.oidcIssuerUrl
    serviceNamespace: serviceNamespace
    flowNamespace: flowNamespace
    serviceAccountService: serviceAccountService
    serviceAccountFlows: serviceAccountFlows
    serviceAccountAirflow: serviceAccountAirflow
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'mfhelm-storage'
  scope: rg
  params: {
    location: location
    orgPrefix: checkedOrgPrefix
    nameSuffix: nameSuffix
    deployAirflow: deployAirflow
    metaflowContainerName: metaflowContainerName
    airflowLogsContainerName: airflowLogsContainerName
    workloadPrincipalId: identity.outputs.principalId
    deployerPrincipalId: deployerPrincipalId
    deployerPrincipalType: deployerPrincipalType
    tags: tags
  }
}

module keyvault 'modules/keyvault.bicep' = {
  name: 'mfhelm-keyvault'
  scope: rg
  params: {
    location: location
    orgPrefix: checkedOrgPrefix
    nameSuffix: nameSuffix
    postgresAdminSecretName: postgresAdminSecretName
    postgresAdminPassword: postgresAdminPassword
    deployerPrincipalId: deployerPrincipalId
    deployerPrincipalType: deployerPrincipalType
    tags: tags
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'mfhelm-postgres'
  scope: rg
  params: {
    location: location
    orgPrefix: checkedOrgPrefix
    nameSuffix: nameSuffix
    postgresVersion: postgresVersion
    skuTier: postgresTier
    skuName: postgresSku
    storageSizeGB: postgresStorageGB
    administratorLogin: postgresAdminLogin
    administratorLoginPassword: postgresAdminPassword
    delegatedSubnetId: network.outputs.postgresSubnetId
    privateDnsZoneId: network.outputs.postgresDnsZoneId
    databaseName: postgresDatabaseName
    deployAirflow: deployAirflow
    tags: tags
  }
}

// The flow image's registry: the nodes pull with the kubelet identity, the
// deployer builds with ACR's build service.
module registry 'modules/registry.bicep' = if (registryEnabled) {
  name: 'mfhelm-registry'
  scope: rg
  params: {
    location: location
    orgPrefix: checkedOrgPrefix
    nameSuffix: nameSuffix
    kubeletPrincipalId: aks.outputs.kubeletPrincipalId
    deployerPrincipalId: deployerPrincipalId
    deployerPrincipalType: deployerPrincipalType
    tags: tags
  }
}

// The Entra app registration for sign-in (Microsoft Graph Bicep), unless an
// existing app's client id is given (a deployer who may not create apps).
module signin 'modules/signin.bicep' = if (createSigninApp) {
  name: 'mfhelm-signin'
  scope: rg
  params: {
    uniqueName: '${checkedOrgPrefix}-metaflow-signin-${take(nameSuffix, 6)}'
    displayName: 'Metaflow sign-in (${checkedOrgPrefix})'
    host: checkedAccessHost
    oidcIssuerUrl: aks.outputs.oidcIssuerUrl
    serviceAccountSubject: 'system:serviceaccount:${serviceNamespace}:${signinServiceAccount}'
    ownerPrincipalId: deployerPrincipalId
  }
}

// The add-on's identity may read the one certificate the entry point serves,
// in the certificate's own vault (any resource group or subscription).
module tlsCertificateRole 'modules/tls-certificate-role.bicep' = if (tlsFromKeyVault) {
  name: 'mfhelm-tls-certificate-role'
  scope: resourceGroup(tlsFromKeyVault ? tlsVaultIdParts[2] : subscription().subscriptionId, tlsFromKeyVault ? tlsVaultIdParts[4] : resourceGroupName)
  params: {
    vaultName: tlsCertificateVaultName
    certificateName: tlsCertificateName
    principalId: aks.outputs.appRoutingPrincipalId
  }
}

@description('Resource group that holds the stack.')
output resourceGroupName string = rg.name

@description('Azure region of the stack.')
output location string = location

@description('Entra ID tenant of the subscription.')
output tenantId string = tenant().tenantId

@description('Subscription ID of the stack.')
output subscriptionId string = subscription().subscriptionId

@description('Name of the AKS cluster.')
output aksClusterName string = aks.outputs.clusterName

@description('OIDC issuer URL of the AKS cluster.')
output aksOidcIssuerUrl string = aks.outputs.oidcIssuerUrl

@description('Name of the workload managed identity.')
output identityName string = identity.outputs.name

@description('Client ID of the workload managed identity, for the service-account annotation.')
output identityClientId string = identity.outputs.clientId

@description('Name of the storage account.')
output storageAccountName string = storage.outputs.accountName

@description('Blob service endpoint of the storage account, as Azure reports it (with a trailing slash).')
output storageBlobEndpoint string = storage.outputs.blobEndpoint

@description('Container for Metaflow artifacts.')
output metaflowContainerName string = storage.outputs.metaflowContainerName

@description('Container for Airflow task logs, or empty when Airflow is off.')
output airflowLogsContainerName string = storage.outputs.airflowLogsContainerName

@description('Name of the PostgreSQL Flexible Server.')
output postgresServerName string = postgres.outputs.serverName

@description('FQDN of the PostgreSQL server (private, resolvable inside the VNet).')
output postgresFqdn string = postgres.outputs.fqdn

@description('Name of the Metaflow database.')
output postgresDatabaseName string = postgres.outputs.databaseName

@description('PostgreSQL administrator login name.')
output postgresAdminLogin string = postgresAdminLogin

@description('Name of the Key Vault that holds the PostgreSQL password.')
output keyVaultName string = keyvault.outputs.vaultName

@description('URI of the Key Vault.')
output keyVaultUri string = keyvault.outputs.vaultUri

// Not "...PasswordSecretName": outputs-should-not-contain-secrets flags any output
// whose name contains "password".
@description('Name of the Key Vault secret holding the PostgreSQL administrator password (not the value).')
output postgresAdminSecretName string = keyvault.outputs.postgresAdminSecretName

@description('Namespace of the Metaflow services.')
output serviceNamespace string = serviceNamespace

@description('Namespace where flow pods run.')
output flowNamespace string = flowNamespace

@description('Service account of the metadata service and UI.')
output serviceAccountService string = serviceAccountService

@description('Service account of flow pods.')
output serviceAccountFlows string = serviceAccountFlows

@description('Service account of Airflow.')
output serviceAccountAirflow string = serviceAccountAirflow

@description('Node label key of the taskworkers pool.')
output taskworkersLabelKey string = taskworkersLabelKey

@description('Node label value of the taskworkers pool.')
output taskworkersLabelValue string = taskworkersLabelValue

@description('Whether the chart deploys Argo Workflows.')
output deployArgo bool = deployArgo

@description('Whether the chart deploys Airflow.')
output deployAirflow bool = deployAirflow

@description('Client ID of the Entra app the sign-in proxy uses: the app this deployment created, or accessClientId passed through; empty when access is off.')
output signinClientId string = createSigninApp ? signin.outputs.clientId : (accessEnabled ? accessClientId : '')

@description('Whether the application-routing add-on (managed NGINX) is on.')
output appRoutingEnabled bool = accessEnabled

@description('Name of the container registry, or empty when [registry] enabled = false.')
output registryName string = registryEnabled ? registry.outputs.name : ''

@description('Login server of the container registry (the flow image\'s host), or empty when the registry is off.')
output registryLoginServer string = registryEnabled ? registry.outputs.loginServer : ''

@description('Whether the GPU pool exists (the chart then runs the NVIDIA device plugin).')
output gpuPoolEnabled bool = aks.outputs.gpuPoolEnabled

@description('Whether the Spot pool exists (the Metaflow config then tolerates the Spot taint).')
output spotPoolEnabled bool = aks.outputs.spotPoolEnabled
